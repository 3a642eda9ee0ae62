"""The run view: everything a planner or a person needs to know about one run, folded
from the run's events in log order.

`RunView.fold(events)` is pure: the same events always give the same view, which is what
lets any projection store be rebuilt from offset 0 and compared with the live one.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from projections.episodic import Episodes, EpisodicProjection
from projections.errors import ProjectionError
from projections.stores.base import ProjectionStore
from streams.codec import EventCodec
from streams.errors import PoisonEvent
from streams.events import (
    AgentMessage,
    ApprovalDecided,
    ApprovalDecisionIgnored,
    ApprovalRequested,
    BudgetCharged,
    Event,
    GoalChanged,
    HumanAnswered,
    ObservationRecorded,
    PlanProposed,
    RunAborted,
    RunAdmitted,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunQueued,
    RunResumed,
    RunSuspended,
    ScratchpadSummarized,
    TaskSubmitted,
    ToolCallDispatched,
    ToolCallRejected,
    ToolCallRequested,
)
from streams.log import EventLog, LogRecord, TopicPartition
from streams.partitioning import partition_for
from streams.topics import Topics
from streams.worker import HandlerContext

RunStatus = Literal["queued", "running", "suspended", "completed", "failed", "aborted", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "aborted", "cancelled"})
CallStatus = Literal["requested", "rejected", "awaiting_approval", "awaiting_human", "dispatched", "observed"]
ApprovalStatus = Literal["pending", "approved", "denied", "expired"]
DECISIONS: frozenset[str] = frozenset({"approved", "denied", "expired"})


@dataclass
class CallView:
    """One tool call of a step, from request to observation."""

    tool_call_id: str
    tool: str
    arguments_json: str
    status: CallStatus = "requested"
    ok: bool | None = None
    data_json: str | None = None
    error: str | None = None
    rejection: list[str] = field(default_factory=list)
    idempotency_key: str | None = None
    duration_ms: int = 0

    @property
    def done(self) -> bool:
        return self.status in ("rejected", "observed")


@dataclass
class ApprovalView:
    """One approval request of the run and the decision that settled it, if any.

    Only the first decision that names the request's exact tool call and arguments digest
    (and, for an approval, arrives before the request expires) settles it; every other
    decision is listed in `RunView.ignored_decisions` with the reason.
    """

    approval_id: str
    tool_call_id: str
    tool: str
    arguments_digest: str
    risk_tier: str
    expires_at: datetime | None = None
    status: ApprovalStatus = "pending"
    decided_by_event_id: str | None = None
    reviewer: str | None = None
    comment: str | None = None

    @property
    def pending(self) -> bool:
        return self.status == "pending"


@dataclass
class StepView:
    """One planner step: what it thought and which calls it made."""

    step: int
    thought: str
    model: str
    calls: list[CallView] = field(default_factory=list)


@dataclass
class RunView:
    """A run as of its latest folded event."""

    run_id: str
    tenant_id: str = ""
    goal: str = ""
    model: str | None = None
    fallback_model: str | None = None
    tools: list[str] = field(default_factory=list)
    max_steps: int | None = None
    max_tokens: int | None = None
    max_usd: float | None = None
    deadline: datetime | None = None
    status: RunStatus = "running"
    steps: list[StepView] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    tool_calls: int = 0
    summary: str | None = None
    summary_up_to_step: int = 0
    answer: str | None = None
    error: str | None = None
    goal_history: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    submitted_at: datetime | None = None
    updated_at: datetime | None = None
    last_event_id: str | None = None
    last_event_type: str | None = None
    events: int = 0
    pending_approvals: dict[str, str] = field(default_factory=dict)
    """approval id -> tool call id, for requests not yet decided."""
    approvals: dict[str, ApprovalView] = field(default_factory=dict)
    """Every approval request of the run, by approval id."""
    ignored_decisions: dict[str, str] = field(default_factory=dict)
    """event id of an ApprovalDecided that settled nothing -> why it was ignored."""
    questions: dict[str, str] = field(default_factory=dict)
    """tool call id of an unanswered ask_human call -> its question."""
    cancelled_by: str | None = None
    queued_reason: str | None = None
    """Why the run waited for a slot of its tenant's concurrency cap, if it did."""
    admitted_at: datetime | None = None
    """When a queued run was admitted (None while queued, and for runs never queued)."""
    _calls: dict[str, CallView] = field(default_factory=dict, repr=False)

    @property
    def step(self) -> int:
        return self.steps[-1].step if self.steps else 0

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def call(self, tool_call_id: str) -> CallView | None:
        return self._calls.get(tool_call_id)

    @property
    def pending_calls(self) -> list[CallView]:
        """Calls of the latest step that have no observation or rejection yet."""
        return [c for c in self.steps[-1].calls if not c.done] if self.steps else []

    @classmethod
    def fold(cls, run_id: str, events: Iterable[Event]) -> RunView:
        view = cls(run_id)
        for event in events:
            view.apply(event)
        return view

    def apply(self, event: Event) -> None:
        """Fold one more event into the view. A run's first terminal event is final."""
        self.events += 1
        self.last_event_id = event.meta.event_id
        self.last_event_type = event.type_name
        self.updated_at = event.meta.occurred_at
        match event:
            case TaskSubmitted():
                self.tenant_id = event.meta.tenant_id
                self.goal = event.goal
                self.goal_history.append(event.goal)
                self.model = event.model
                self.fallback_model = event.fallback_model
                self.tools = list(event.tools)
                self.max_steps = event.budget.max_steps
                self.max_tokens = event.budget.max_tokens
                self.max_usd = event.budget.max_usd
                self.deadline = event.budget.deadline
                self.submitted_at = event.meta.occurred_at
            case PlanProposed():
                self.steps.append(StepView(event.step, event.thought, event.model))
            case ToolCallRequested():
                call = CallView(event.tool_call_id, event.tool, event.arguments_json)
                self._calls[call.tool_call_id] = call
                step = next((s for s in reversed(self.steps) if s.step == event.step), None)
                if step is None:
                    step = StepView(event.step, "", "")
                    self.steps.append(step)
                step.calls.append(call)
            case ToolCallRejected():
                if rejected := self._calls.get(event.tool_call_id):
                    rejected.status = "rejected"
                    rejected.rejection = [event.reason, *event.errors]
            case ApprovalRequested():
                if event.approval_id not in self.approvals:
                    self.approvals[event.approval_id] = ApprovalView(
                        event.approval_id,
                        event.tool_call_id,
                        event.tool,
                        event.arguments_digest,
                        event.risk_tier,
                        event.expires_at,
                    )
                    self.pending_approvals[event.approval_id] = event.tool_call_id
                    if waiting := self._calls.get(event.tool_call_id):
                        waiting.status = "awaiting_approval"
            case ApprovalDecided():
                self._decide(event)
            case ApprovalDecisionIgnored():
                pass
            case HumanAnswered():
                self.questions.pop(event.tool_call_id, None)
            case ToolCallDispatched():
                if dispatched := self._calls.get(event.tool_call_id):
                    dispatched.status = "dispatched"
                    dispatched.arguments_json = event.arguments_json
                    dispatched.idempotency_key = event.idempotency_key
            case ObservationRecorded():
                if observed := self._calls.get(event.tool_call_id):
                    observed.status = "observed"
                    observed.ok = event.ok
                    observed.data_json = event.data_json
                    observed.error = event.error
                    observed.duration_ms = event.duration_ms
            case BudgetCharged():
                self.input_tokens += event.usage.input_tokens
                self.output_tokens += event.usage.output_tokens
                self.cost_usd += event.usage.cost_usd
                self.tool_calls += event.tool_calls
            case ScratchpadSummarized():
                self.summary = event.summary
                self.summary_up_to_step = event.up_to_step
            case GoalChanged():
                self.goal = event.goal
                self.goal_history.append(event.goal)
            case AgentMessage():
                self.messages.append(f"{event.from_agent}: {event.content}")
            case RunSuspended():
                if not self.terminal:
                    self.status = "suspended"
                    asking = self._calls.get(event.tool_call_id or "")
                    if event.reason == "ask_human" and asking is not None and not asking.done:
                        asking.status = "awaiting_human"
                        try:
                            question = json.loads(asking.arguments_json).get("question", "")
                        except (ValueError, AttributeError):
                            question = asking.arguments_json
                        self.questions[asking.tool_call_id] = str(question)
            case RunQueued():
                # Only a run not yet admitted can wait in the queue: a late or replayed
                # RunQueued never stops a run that already started.
                if self.status == "running" and self.admitted_at is None and not self.steps:
                    self.status = "queued"
                    self.queued_reason = event.reason
            case RunAdmitted():
                if self.status == "queued":  # admitting an admitted (or ended) run is a no-op
                    self.status = "running"
                    self.admitted_at = event.meta.occurred_at
            case RunResumed():
                if self.status == "suspended":
                    self.status = "running"
            case RunCompleted() if not self.terminal:
                self.status = "completed"
                self.answer = event.answer
            case RunFailed() if not self.terminal:
                self.status = "failed"
                self.error = event.error
            case RunAborted() if not self.terminal:
                self.status = "aborted"
                self.error = f"{event.limit}: {event.reason}"
            case RunCancelled() if not self.terminal:
                self.status = "cancelled"
                self.error = event.reason
                self.cancelled_by = event.requested_by
            case _:
                pass

    def _decide(self, event: ApprovalDecided) -> None:
        reason = self.decision_problem(event)
        if reason is not None:
            self.ignored_decisions[event.meta.event_id] = reason
            return
        approval = self.approvals[event.approval_id]
        approval.status = event.decision  # type: ignore[assignment]  # checked by decision_problem
        approval.decided_by_event_id = event.meta.event_id
        approval.reviewer = event.reviewer
        approval.comment = event.comment
        self.pending_approvals.pop(event.approval_id, None)

    def decision_problem(self, event: ApprovalDecided) -> str | None:
        """Why a decision would settle nothing, or None when it settles its request."""
        approval = self.approvals.get(event.approval_id)
        if approval is None:
            return "unknown_approval"
        if not approval.pending:
            return f"already_{approval.status}"
        if event.decision not in DECISIONS:
            return "unknown_decision"
        if event.tool_call_id != approval.tool_call_id:
            return "tool_call_mismatch"
        if event.arguments_digest != approval.arguments_digest:
            return "digest_mismatch"
        expires = approval.expires_at
        if event.decision == "approved" and expires is not None and event.meta.occurred_at >= expires:
            return "expired"
        return None

    @property
    def waits(self) -> int:
        """How many things the run waits for: undecided approvals and unanswered questions."""
        return len(self.pending_approvals) + len(self.questions)


_READ_BATCH = 5000


class RunViews:
    """Builds a run's current view from the log, at a cost that does not grow with the
    topic or with the number of runs.

    One tail per partition reads each record once for every run at once and keeps the
    decoded events of recently used runs (least recently used runs are evicted, and read
    back by key when needed again). A view is as fresh as the caller asks: `view()` reads
    up to the log's end; a handler's view (`for_handler`) reads up to what its worker has
    consumed, which is all it may rely on, plus the events it emitted itself that the log
    has not shown it yet (`HandlerContext.uncommitted`). Records that cannot be decoded
    are left out here; the workers dead-letter them.
    """

    def __init__(
        self,
        log: EventLog,
        codec: EventCodec,
        topics: Topics,
        *,
        cache_runs: int = 10_000,
        store: ProjectionStore | None = None,
        history_wait_s: float = 10.0,
    ) -> None:
        """`store`: the projection store whose episodic view holds every run's events. With
        it, a tail starts where that view has got to and a run not in the cache is read
        from the view, never by scanning the log; without it, tails start at offset 0 and
        a run not in the cache is read back with `EventLog.read_key`. `history_wait_s`: how
        long a read from the view waits for it to catch up with the tail."""
        self.log = log
        self.codec = codec
        self.topics = topics
        self.cache_runs = cache_runs
        self.store = store
        self.history_wait_s = history_wait_s
        self._tail_starts: dict[int, int] = {}
        self._end_reads: dict[int, float] = {}  # partition -> when the last read to the end began
        self._cache: OrderedDict[str, list[Event]] = OrderedDict()
        self._tails: dict[int, int] = {}  # partition -> the next offset its tail reads
        self._locks: dict[int, asyncio.Lock] = {}
        # Runs evicted from the cache: their absence from it says nothing. Bounded; past the
        # bound absence is never trusted again and a missing run is read back by key.
        self._evicted: set[str] = set()
        self._absence_known = True

    async def _partition(self, run_id: str) -> int:
        return partition_for(run_id.encode(), await self.log.partitions(self.topics.events))

    async def _catch_up(self, partition: int, through: int | None) -> None:
        """Read the partition's new records into the cached runs, up to `through` (the log's
        end when None)."""
        asked = time.monotonic()
        lock = self._locks.setdefault(partition, asyncio.Lock())
        async with lock:
            if through is None and self._end_reads.get(partition, -1.0) >= asked:
                return  # a read to the end began after this call: it is fresh enough
            if partition not in self._tails:
                start = 0
                if self.store is not None:
                    start = await self.store.applied(EpisodicProjection.name, self.topics.events, partition)
                self._tails[partition] = self._tail_starts[partition] = start
            tail = self._tails[partition]
            if through is not None and tail >= through:
                return
            if through is None:
                self._end_reads[partition] = time.monotonic()
            # A read returns what the partition holds when it starts, up to the batch size:
            # reading until a batch comes back short reaches the end (or `through`).
            while through is None or tail < through:
                batch = await self.log.read(self.topics.events, partition, tail, _READ_BATCH)
                for record in batch:
                    await self._take(record)
                if batch:
                    tail = batch[-1].offset + 1
                    self._tails[partition] = tail
                if len(batch) < _READ_BATCH:
                    break

    async def _take(self, record: LogRecord) -> None:
        if record.key is None:
            return
        run_id = record.key.decode(errors="replace")
        events = self._cache.get(run_id)
        try:
            if events is None:
                # A run's first event starts its entry; other runs' history is read back
                # by key if they are ever asked for.
                if await self.codec.type_of(record.value) != "TaskSubmitted":
                    return
                events = self._remember(run_id, [])
            events.append(await self.codec.decode(record.value))
        except PoisonEvent:
            return

    def _remember(self, run_id: str, events: list[Event]) -> list[Event]:
        self._cache[run_id] = events
        self._evicted.discard(run_id)
        while len(self._cache) > self.cache_runs:
            evicted, _ = self._cache.popitem(last=False)
            self._evicted.add(evicted)
        if len(self._evicted) > 10 * self.cache_runs:
            self._evicted.clear()
            self._absence_known = False
        return events

    async def events(
        self, run_id: str, *, through: int | None = None, tenant: str | None = None
    ) -> list[Event]:
        """The run's committed events, in log order, up to `through` at least (to the
        log's end when None). `tenant`, when known, lets a run that is not cached be read
        from the episodic view."""
        partition = await self._partition(run_id)
        await self._catch_up(partition, through)
        cached = self._cache.get(run_id)
        if cached is None:
            # Under the partition's lock, so the tail does not move past the history read.
            async with self._locks[partition]:
                cached = self._cache.get(run_id)
                if cached is None:
                    cached = await self._history(run_id, partition, tenant)
                    if not cached:
                        return []
                    self._remember(run_id, cached)
        self._cache.move_to_end(run_id)
        return list(cached)

    async def _history(self, run_id: str, partition: int, tenant: str | None) -> list[Event]:
        """The events of a run the tail has not cached, below the tail."""
        tail = self._tails[partition]
        start = self._tail_starts[partition]
        known_absent = self._absence_known and run_id not in self._evicted
        if self.store is not None and tenant is not None:
            try:
                # The view held everything below the tail's start when the tail began, and
                # the tail caches every run that starts after that. A run with nothing
                # below the start is one the tail never saw begin: it does not exist.
                before = await self._from_view(run_id, tenant, start)
                if not before and known_absent:
                    return []
                if tail > start:  # the rest of an older run: wait for the view to get there
                    position = TopicPartition(self.topics.events, partition)
                    await self.store.wait_for(
                        EpisodicProjection.name, position, tail - 1, self.history_wait_s
                    )
                return await self._from_view(run_id, tenant, tail)
            except ProjectionError:
                pass  # no projector keeps the view (or it is not set up yet): read the log
        elif start == 0 and known_absent:
            return []  # the tail read the partition from its start and never saw this run
        events: list[Event] = []
        for record in await self.log.read_key(self.topics.events, partition, run_id.encode()):
            if record.offset >= tail:
                break  # the tail brings these when it gets there
            try:
                events.append(await self.codec.decode(record.value))
            except PoisonEvent:
                continue
        return events

    async def _from_view(self, run_id: str, tenant: str, below: int) -> list[Event]:
        assert self.store is not None
        episodes = Episodes(self.store)
        events: list[Event] = []
        after: int | None = None
        while True:
            page = await episodes.by_run(tenant, run_id, after_offset=after, limit=500)
            events.extend(row.event() for row in page if row.offset < below)
            if len(page) < 500 or page[-1].offset >= below:
                return events
            after = page[-1].offset

    async def view(
        self,
        run_id: str,
        include: Sequence[Event] = (),
        *,
        through: int | None = None,
        tenant: str | None = None,
    ) -> RunView:
        events = await self.events(run_id, through=through, tenant=tenant)
        seen = {e.meta.event_id for e in events}
        events.extend(e for e in include if e.meta.event_id not in seen and e.meta.run_id == run_id)
        return RunView.fold(run_id, events)

    async def for_handler(self, event: Event, ctx: HandlerContext) -> RunView:
        """The view a handler decides on: everything its worker has consumed of the run's
        partition, and what the handler emitted for the run that the log has not yet shown."""
        through = ctx.consumed_through if ctx.record.topic == self.topics.events else None
        return await self.view(
            event.meta.run_id, ctx.uncommitted, through=through, tenant=event.meta.tenant_id
        )
