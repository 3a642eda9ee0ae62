"""Simulated agent runs: many runs of many tenants, each in a valid order, interleaved.

Every run starts with TaskSubmitted and goes through planning steps, tool calls (some
rejected, some waiting for an approval, most dispatched and observed), budget charges,
side events (goal changes, messages, summaries, memories), and mostly ends in a terminal
event. The same seed always gives the same events.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from streams.codec import EventCodec
from streams.events import (
    AgentMessage,
    ApprovalDecided,
    ApprovalRequested,
    Budget,
    BudgetCharged,
    Event,
    EventMeta,
    GoalChanged,
    MemoryWritten,
    ObservationRecorded,
    PlanProposed,
    RunAborted,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunResumed,
    RunSuspended,
    ScratchpadSummarized,
    TaskSubmitted,
    ToolCallDispatched,
    ToolCallRejected,
    ToolCallRequested,
    Usage,
)
from streams.log import EventLog, OutgoingRecord

TENANTS = ("acme", "globex", "initech")
TOOLS = ("calculator", "http_fetch", "search", "sql")
START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@dataclass
class _Run:
    rng: random.Random
    run_id: str
    tenant: str
    events: list[Event] = field(default_factory=list)

    def meta(self, producer: str) -> EventMeta:
        previous = self.events[-1].meta.event_id if self.events else None
        return EventMeta(
            event_id=str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
            run_id=self.run_id,
            tenant_id=self.tenant,
            causation_id=previous,
            correlation_id=self.run_id,
            occurred_at=START,  # stamped when the runs are interleaved
            producer=producer,
        )

    def add(self, event: Event) -> None:
        self.events.append(event)

    def usage(self, scale: float) -> Usage:
        return Usage(
            input_tokens=self.rng.randint(50, 4000),
            output_tokens=self.rng.randint(0, 800),
            cost_usd=self.rng.uniform(0, scale),
        )

    def call(self, step: int) -> None:
        rng = self.rng
        call_id = f"call-{rng.getrandbits(48):012x}"
        tool = rng.choice(TOOLS)
        args = f'{{"q": "{rng.randint(0, 999)}"}}'
        self.add(
            ToolCallRequested(
                meta=self.meta("planner"), step=step, tool_call_id=call_id, tool=tool, arguments_json=args
            )
        )
        roll = rng.random()
        if roll < 0.12:
            self.add(
                ToolCallRejected(
                    meta=self.meta("router"),
                    step=step,
                    tool_call_id=call_id,
                    tool=tool,
                    reason=rng.choice(["unknown_tool", "invalid_arguments", "budget"]),
                    errors=["nope"],
                )
            )
            return
        if roll < 0.35:
            approval_id = f"appr-{rng.getrandbits(48):012x}"
            self.add(
                ApprovalRequested(
                    meta=self.meta("router"),
                    approval_id=approval_id,
                    tool_call_id=call_id,
                    tool=tool,
                    arguments_json=args,
                    arguments_digest=f"d{len(args)}",
                    risk_tier=rng.choice(["medium", "high"]),
                    reason="risky tool",
                )
            )
            self.add(RunSuspended(meta=self.meta("router"), reason="approval", approval_id=approval_id))
            decision = rng.choice(["approved", "approved", "denied", "expired"])
            self.add(
                ApprovalDecided(
                    meta=self.meta("gateway"),
                    approval_id=approval_id,
                    tool_call_id=call_id,
                    arguments_digest=f"d{len(args)}",
                    decision=decision,
                    reviewer="system" if decision == "expired" else "alice",
                    comment=None if rng.random() < 0.5 else "ok",
                )
            )
            self.add(RunResumed(meta=self.meta("approvals"), reason=decision))
            if decision != "approved":
                self.add(
                    ToolCallRejected(
                        meta=self.meta("router"),
                        step=step,
                        tool_call_id=call_id,
                        tool=tool,
                        reason="policy",
                        errors=[decision],
                    )
                )
                return
        self.add(
            ToolCallDispatched(
                meta=self.meta("router"),
                step=step,
                tool_call_id=call_id,
                tool=tool,
                arguments_json=args,
                idempotency_key=f"k-{call_id}",
                timeout_ms=30000,
            )
        )
        ok = rng.random() < 0.8
        self.add(
            ObservationRecorded(
                meta=self.meta(f"tool:{tool}"),
                step=step,
                tool_call_id=call_id,
                tool=tool,
                ok=ok,
                data_json='{"v": 1}' if ok else None,
                error=None if ok else "boom",
                duration_ms=rng.randint(1, 5000),
            )
        )
        self.add(
            BudgetCharged(
                meta=self.meta("evaluator"), step=step, usage=self.usage(0.001), tool_calls=1, source="tool"
            )
        )

    def script(self) -> list[Event]:
        rng = self.rng
        self.add(
            TaskSubmitted(
                meta=self.meta("gateway"),
                goal=f"goal of {self.run_id}",
                model=rng.choice([None, "openai:gpt-4o-mini"]),
                budget=Budget(max_steps=rng.choice([None, 5, 10]), max_usd=rng.choice([None, 1.0])),
                tools=list(TOOLS[: rng.randint(1, len(TOOLS))]),
                submitted_by="tester",
            )
        )
        for step in range(1, rng.randint(0, 4) + 1):
            if rng.random() < 0.05:
                self.add(
                    GoalChanged(meta=self.meta("gateway"), goal=f"new goal {step}", requested_by="alice")
                )
            if rng.random() < 0.1:
                self.add(
                    AgentMessage(
                        meta=self.meta("supervisor"),
                        from_agent="supervisor",
                        to_agent="worker",
                        content=f"hint {step}",
                    )
                )
            calls = rng.randint(0, 3)
            usage = self.usage(0.05)
            plan_meta = self.meta("planner")
            based_on = self.events[-1].meta.event_id
            self.add(
                PlanProposed(
                    meta=plan_meta,
                    step=step,
                    thought=f"step {step}",
                    model="m",
                    usage=usage,
                    based_on_event_id=based_on,
                )
            )
            self.add(BudgetCharged(meta=self.meta("evaluator"), step=step, usage=usage, source="model"))
            for _ in range(calls):
                self.call(step)
            if step > 2 and rng.random() < 0.2:
                self.add(
                    ScratchpadSummarized(
                        meta=self.meta("planner"), up_to_step=step - 1, summary="so far", method="truncation"
                    )
                )
            if rng.random() < 0.05:
                self.add(
                    MemoryWritten(
                        meta=self.meta("memory"),
                        memory_id=f"mem-{step}",
                        namespace="default",
                        text="remember",
                    )
                )
        end = rng.random()
        if end < 0.55:
            self.add(RunCompleted(meta=self.meta("planner"), answer="42", steps=3, usage=Usage()))
        elif end < 0.7:
            self.add(RunFailed(meta=self.meta("planner"), error="model kept failing"))
        elif end < 0.8:
            self.add(RunAborted(meta=self.meta("evaluator"), reason="over budget", limit="max_usd"))
        elif end < 0.9:
            self.add(RunCancelled(meta=self.meta("gateway"), reason="user", requested_by="alice"))
        elif end < 0.95:
            approval_id = f"appr-{rng.getrandbits(48):012x}"
            self.add(
                ApprovalRequested(
                    meta=self.meta("router"),
                    approval_id=approval_id,
                    tool_call_id="call-last",
                    tool="sql",
                    arguments_json="{}",
                    arguments_digest="d2",
                    risk_tier="high",
                    reason="writes",
                )
            )
            self.add(RunSuspended(meta=self.meta("router"), reason="approval", approval_id=approval_id))
        return self.events


def meta(run_id: str, tenant: str, second: float = 0, *, producer: str = "test") -> EventMeta:
    """Meta for a hand-written event, `second` seconds after START."""
    return EventMeta(
        event_id=str(uuid.uuid4()),
        run_id=run_id,
        tenant_id=tenant,
        correlation_id=run_id,
        occurred_at=START + timedelta(seconds=second),
        producer=producer,
    )


def simulate(
    seed: int,
    runs: int,
    *,
    tenants: Sequence[str] = TENANTS,
    start: datetime = START,
    run_prefix: str = "run",
) -> list[Event]:
    """The events of `runs` simulated runs, each in order, interleaved at random."""
    rng = random.Random(seed)
    scripts = [
        _Run(random.Random(rng.getrandbits(64)), f"{run_prefix}-{i:05d}", rng.choice(tenants)).script()
        for i in range(runs)
    ]
    # Runs start at different times and overlap, as they would in production.
    queue = [(rng.randrange(max(1, runs * 3)), i) for i in range(runs)]
    queue.sort()
    active: list[int] = []
    positions = [0] * runs
    out: list[Event] = []
    clock = start
    while queue or active:
        if queue and (not active or rng.random() < 0.15):
            active.append(queue.pop(0)[1])
        index = rng.choice(active)
        event = scripts[index][positions[index]]
        positions[index] += 1
        if positions[index] == len(scripts[index]):
            active.remove(index)
        clock += timedelta(milliseconds=rng.randint(1, 40))
        out.append(event.model_copy(update={"meta": event.meta.model_copy(update={"occurred_at": clock})}))
    return out


async def publish(
    log: EventLog, codec: EventCodec, topic: str, events: Sequence[Event], chunk: int = 500
) -> None:
    """Append events to `topic`, keyed by run id, in order."""
    for i in range(0, len(events), chunk):
        records = [
            OutgoingRecord(topic, e.meta.run_id.encode(), await codec.encode(topic, e))
            for e in events[i : i + chunk]
        ]
        await log.append(records)
