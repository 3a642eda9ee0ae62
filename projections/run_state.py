"""The run state view: one row per run, folded by `RunView`, queried per tenant.

Each run has a row of what lists and dashboards show (status, goal, step, tokens, cost,
pending calls, the last event applied) and a snapshot of its whole `RunView`, from which
the next batch continues the fold. The fold itself is `RunView.apply`; this module only
stores it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import TypeAdapter

from projections.projector import Applied, Projection
from projections.run_view import RunView
from projections.stores.base import MAX_ROWS, Index, ProjectionStore, Row, Table, ViewTransaction
from streams.events import EVENT_TYPES, Event
from streams.log import LogRecord

RUNS = Table(
    "run_state",
    columns={
        "tenant_id": "text",
        "run_id": "text",
        "status": "text",
        "goal": "text",
        "model": "text",
        "step": "int",
        "input_tokens": "int",
        "output_tokens": "int",
        "cost_usd": "float",
        "tool_calls": "int",
        "pending_tool_call_ids": "json",
        "pending_approval_ids": "json",
        "events": "int",
        "last_event_id": "text",
        "last_event_type": "text",
        "last_partition": "int",
        "last_offset": "int",
        "answer": "text",
        "error": "text",
        "created_at": "time",
        "submitted_at": "time",
        "updated_at": "time",
    },
    key=("tenant_id", "run_id"),
    indexes=(
        Index("by_created", order=("created_at",)),
        Index("by_status", equal=("status",), order=("created_at",)),
    ),
)

VIEWS = Table(
    "run_state_views",
    columns={"tenant_id": "text", "run_id": "text", "view": "text"},
    key=("tenant_id", "run_id"),
)
"""The whole RunView of each run, kept apart so that listing runs never reads it."""

QUEUES_PARTITION = "*queues*"
"""The one partition of QUEUED_TENANTS: the directory is not any tenant's data."""

QUEUED_TENANTS = Table(
    "run_state_queued_tenants",
    columns={"tenant_id": "text", "tenant": "text", "since": "time"},
    key=("tenant_id", "tenant"),
)
"""Every tenant that has ever had a queued run (one row each, in `QUEUES_PARTITION`, with
its first queueing), so the admission timer finds the queues without scanning runs. Rows
are never removed: the table grows with the number of tenants, not with their backlogs."""

IN_FLIGHT = ("running", "suspended")
"""The statuses that hold a slot of the tenant's `max_concurrent_runs`."""

_VIEW = TypeAdapter(RunView)


def dump_view(view: RunView) -> str:
    """A RunView as JSON. Its call index is left out: it aliases the steps' calls."""
    return _VIEW.dump_json(view, exclude={"_calls"}).decode()


def load_view(text: str) -> RunView:
    view = _VIEW.validate_json(text)
    # Rebuild the index over the very objects the steps hold, as `RunView.apply` made it.
    for step in view.steps:
        for call in step.calls:
            view._calls[call.tool_call_id] = call
    return view


@dataclass(frozen=True)
class RunState:
    """One run as of the last event applied to it."""

    tenant_id: str
    run_id: str
    status: str
    goal: str
    model: str | None
    step: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    tool_calls: int
    pending_tool_call_ids: tuple[str, ...]
    """Calls of the latest step with no observation or rejection yet."""
    pending_approval_ids: tuple[str, ...]
    events: int
    last_event_id: str | None
    last_event_type: str | None
    last_partition: int
    last_offset: int
    """Log position of the last event applied: the view is at least this fresh."""
    answer: str | None
    error: str | None
    created_at: datetime
    """When the run's first event happened (its TaskSubmitted, normally)."""
    submitted_at: datetime | None
    updated_at: datetime | None

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @classmethod
    def from_row(cls, row: Row) -> RunState:
        return cls(
            tenant_id=row["tenant_id"],
            run_id=row["run_id"],
            status=row["status"],
            goal=row["goal"],
            model=row["model"],
            step=row["step"],
            input_tokens=row["input_tokens"],
            output_tokens=row["output_tokens"],
            cost_usd=row["cost_usd"],
            tool_calls=row["tool_calls"],
            pending_tool_call_ids=tuple(row["pending_tool_call_ids"]),
            pending_approval_ids=tuple(row["pending_approval_ids"]),
            events=row["events"],
            last_event_id=row["last_event_id"],
            last_event_type=row["last_event_type"],
            last_partition=row["last_partition"],
            last_offset=row["last_offset"],
            answer=row["answer"],
            error=row["error"],
            created_at=row["created_at"],
            submitted_at=row["submitted_at"],
            updated_at=row["updated_at"],
        )


def _row(tenant_id: str, view: RunView, created_at: datetime, record: LogRecord) -> Row:
    return {
        "tenant_id": tenant_id,
        "run_id": view.run_id,
        "status": view.status,
        "goal": view.goal,
        "model": view.model,
        "step": view.step,
        "input_tokens": view.input_tokens,
        "output_tokens": view.output_tokens,
        "cost_usd": view.cost_usd,
        "tool_calls": view.tool_calls,
        "pending_tool_call_ids": [c.tool_call_id for c in view.pending_calls],
        "pending_approval_ids": sorted(view.pending_approvals),
        "events": view.events,
        "last_event_id": view.last_event_id,
        "last_event_type": view.last_event_type,
        "last_partition": record.partition,
        "last_offset": record.offset,
        "answer": view.answer,
        "error": view.error,
        "created_at": created_at,
        "submitted_at": view.submitted_at,
        "updated_at": view.updated_at,
    }


class RunStateProjection(Projection):
    """Folds every event of a run into its rows with `RunView.apply`.

    The views saved last are also kept in memory (up to `cache_size` runs), so a busy
    run is not parsed back from its snapshot at every batch.
    """

    name = "run_state"
    version = 2  # 2: the `queued` status and the queued-tenants directory
    consumes = frozenset(EVENT_TYPES)
    tables = (RUNS, VIEWS, QUEUED_TENANTS)

    def __init__(self, cache_size: int = 4096) -> None:
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], RunView] = OrderedDict()

    async def apply(self, event: Event, record: LogRecord, txn: ViewTransaction) -> None:
        await self.apply_batch([(event, record)], txn)

    async def _load(self, key: tuple[str, str], row: Row, txn: ViewTransaction) -> RunView:
        cached = self._cache.pop(key, None)
        # The cached view is the committed one only if it has folded exactly the events
        # the row counts: a batch that failed to commit leaves it ahead of the row.
        committed = (row["events"], row["last_event_id"])
        if cached is not None and (cached.events, cached.last_event_id) == committed:
            return cached
        stored = await txn.get(VIEWS, key)
        if stored is None:
            raise ValueError(f"run_state of {key} has a row but no view; rebuild run_state")
        return load_view(stored["view"])

    async def apply_batch(self, items: Sequence[Applied], txn: ViewTransaction) -> None:
        # Each run touched by the batch is loaded and saved once, however many events it got.
        touched: dict[tuple[str, str], tuple[RunView, datetime, LogRecord]] = {}
        for event, record in items:
            key = (event.meta.tenant_id, event.meta.run_id)
            entry = touched.get(key)
            if entry is None:
                row = await txn.get(RUNS, key)
                if row is None:
                    view, created_at = RunView(event.meta.run_id), event.meta.occurred_at
                else:
                    view, created_at = await self._load(key, row, txn), row["created_at"]
            else:
                view, created_at, _ = entry
            was_queued = view.status == "queued"
            view.apply(event)
            if view.status == "queued" and not was_queued:
                # The earliest queueing wins, so a rebuild gives the same row in any interleaving.
                since = event.meta.occurred_at
                known = await txn.get(QUEUED_TENANTS, (QUEUES_PARTITION, key[0]))
                if known is None or since < known["since"]:
                    txn.put(QUEUED_TENANTS, {"tenant_id": QUEUES_PARTITION, "tenant": key[0], "since": since})
            touched[key] = (view, created_at, record)
        for key, (view, created_at, record) in touched.items():
            txn.put(RUNS, _row(key[0], view, created_at, record))
            txn.put(VIEWS, {"tenant_id": key[0], "run_id": key[1], "view": dump_view(view)})
            self._cache[key] = view
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


class RunStates:
    """Queries over the run state view. Every one is scoped to a tenant."""

    def __init__(self, store: ProjectionStore) -> None:
        self.store = store

    async def get(self, tenant_id: str, run_id: str) -> RunState | None:
        rows = await self.store.select(RUNS, tenant_id, equal={"run_id": run_id}, limit=1)
        return RunState.from_row(rows[0]) if rows else None

    async def view(self, tenant_id: str, run_id: str) -> RunView | None:
        """The run's whole `RunView`, as of `RunState.last_offset`."""
        rows = await self.store.select(VIEWS, tenant_id, equal={"run_id": run_id}, limit=1)
        return load_view(rows[0]["view"]) if rows else None

    async def list(
        self, tenant_id: str, status: str | None = None, limit: int = 50, before: datetime | None = None
    ) -> Sequence[RunState]:
        """The tenant's runs, newest first; `before` (exclusive) pages back in time."""
        if status is None:
            rows = await self.store.select(
                RUNS, tenant_id, index="by_created", stop=before, descending=True, limit=limit
            )
        else:
            rows = await self.store.select(
                RUNS,
                tenant_id,
                index="by_status",
                equal={"status": status},
                stop=before,
                descending=True,
                limit=limit,
            )
        return [RunState.from_row(r) for r in rows]

    async def queued_tenants(self) -> Sequence[str]:
        """Every tenant that has had a queued run (some may have none queued now)."""
        rows = await self.store.select(QUEUED_TENANTS, QUEUES_PARTITION, limit=MAX_ROWS)
        return [r["tenant"] for r in rows]

    async def queued(self, tenant_id: str, limit: int) -> Sequence[RunState]:
        """The tenant's queued runs, oldest first: the order they are admitted in."""
        rows = await self.store.select(
            RUNS, tenant_id, index="by_status", equal={"status": "queued"}, limit=limit
        )
        return [RunState.from_row(r) for r in rows]

    async def in_flight(self, tenant_id: str, limit: int = MAX_ROWS) -> int:
        """How many of the tenant's runs are running or suspended (counted up to `limit`)."""
        found = 0
        for status in IN_FLIGHT:
            found += len(await self.list(tenant_id, status=status, limit=limit - found))
            if found >= limit:
                break
        return found

    async def queue(self, tenant_id: str) -> QueueDepth:
        """The tenant's queue depth and runs in flight, each counted up to MAX_ROWS."""
        queued = len(await self.queued(tenant_id, MAX_ROWS))
        return QueueDepth(tenant_id, queued, await self.in_flight(tenant_id))

    async def queue_position(self, state: RunState) -> int | None:
        """1 for the next run to be admitted; None when the run is not queued."""
        if state.status != "queued":
            return None
        rows = await self.store.select(
            RUNS,
            state.tenant_id,
            index="by_status",
            equal={"status": "queued"},
            stop=state.created_at + timedelta(milliseconds=1),
            limit=MAX_ROWS,
        )
        mine = (state.created_at, state.run_id)
        return 1 + sum(1 for r in rows if (r["created_at"], r["run_id"]) < mine)


@dataclass(frozen=True)
class QueueDepth:
    """A tenant's runs waiting for a slot of its concurrency cap, and its runs holding one."""

    tenant_id: str
    queued: int
    in_flight: int
    """Running or suspended: what `max_concurrent_runs` bounds."""
