"""The router's rules for decisions and answers, event by event, over a SQLite log."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from handlers.policy import ToolPolicy
from handlers.router import ToolRouter, approval_id, arguments_digest
from handlers.tools.base import ToolRegistry, canonical_json
from handlers.tools.human import AskHumanTool
from handlers.tools.mail import SendEmailTool, SmtpSettings
from projections.run_view import RunViews
from streams.backends import open_log
from streams.codec import EventCodec
from streams.envelope import root_meta
from streams.events import (
    ApprovalDecided,
    Budget,
    BudgetCharged,
    Event,
    HumanAnswered,
    PlanProposed,
    TaskSubmitted,
    ToolCallRequested,
    Usage,
)
from streams.log import EventLog, LogRecord, OutgoingRecord
from streams.registry import EmbeddedSchemaRegistry
from streams.topics import Topics
from streams.worker import HandlerContext

pytestmark = pytest.mark.unit

EMAIL = {"to": "a@example.org", "subject": "s", "body": "b"}


class Run:
    """One run on a SQLite log, and a router to feed its events to."""

    def __init__(self, log: EventLog, codec: EventCodec, topics: Topics) -> None:
        self.log, self.codec, self.topics = log, codec, topics
        registry = ToolRegistry([SendEmailTool(SmtpSettings("127.0.0.1")), AskHumanTool()])
        policy = ToolPolicy.build({"allowed_tiers": ["low", "medium", "high"]})
        self.router = ToolRouter(RunViews(log, codec, topics), registry, policy)

    async def add(self, *events: Event) -> None:
        for event in events:
            value = await self.codec.encode(self.topics.events, event)
            await self.log.append([OutgoingRecord(self.topics.events, b"r1", value)])

    async def route(self, event: Event) -> list[str]:
        await self.add(event)
        record = LogRecord(self.topics.events, 0, 0, b"r1", b"", [], 0)
        outputs = await self.router.handle(event, HandlerContext("tool-router", record, event, 1))
        await self.add(*outputs)
        return [e.type_name for e in outputs]


@pytest.fixture
async def run(tmp_path: Path) -> AsyncIterator[Run]:
    topics = Topics("t", 1)
    log = open_log(f"sqlite://{tmp_path}/log.db")
    registry = EmbeddedSchemaRegistry(tmp_path / "registry.db")
    for spec in topics.specs():
        await log.create_topic(spec)
    r = Run(log, EventCodec(registry), topics)
    await r.add(
        TaskSubmitted(meta=root_meta("r1", "acme", "t"), goal="g", budget=Budget(max_usd=1.0)),
        PlanProposed(
            meta=root_meta("r1", "acme", "t"),
            step=1,
            thought="",
            model="m",
            usage=Usage(),
            based_on_event_id="x",
        ),
    )
    yield r
    await log.close()
    await registry.aclose()


def requested(call: str, tool: str, args: dict[str, object]) -> ToolCallRequested:
    return ToolCallRequested(
        meta=root_meta("r1", "acme", "t"),
        step=1,
        tool_call_id=call,
        tool=tool,
        arguments_json=canonical_json(args),
    )


def decided(call: str, decision: str = "approved", args: dict[str, object] = EMAIL) -> ApprovalDecided:
    return ApprovalDecided(
        meta=root_meta("r1", "acme", "t"),
        approval_id=approval_id("r1", call),
        tool_call_id=call,
        arguments_digest=arguments_digest(canonical_json(args)),
        decision=decision,
        reviewer="alice",
    )


async def test_two_waits_resume_the_run_only_when_both_are_over(run: Run) -> None:
    assert await run.route(requested("c1", "send_email", EMAIL)) == ["ApprovalRequested", "RunSuspended"]
    assert await run.route(requested("q1", "ask_human", {"question": "ok?"})) == ["RunSuspended"]
    assert await run.route(decided("c1", "denied")) == ["ToolCallRejected"], (
        "the question still holds the run"
    )
    answer = HumanAnswered(
        meta=root_meta("r1", "acme", "t"), tool_call_id="q1", answer="yes", answered_by="bo"
    )
    assert await run.route(answer) == ["ObservationRecorded", "RunResumed"]
    assert await run.route(answer) == [], "the first answer counts"
    not_a_question = HumanAnswered(
        meta=root_meta("r1", "acme", "t"), tool_call_id="c1", answer="x", answered_by="bo"
    )
    assert await run.route(not_a_question) == []


async def test_an_approval_after_the_budget_ran_out_is_not_dispatched(run: Run) -> None:
    await run.route(requested("c1", "send_email", EMAIL))
    await run.add(
        BudgetCharged(meta=root_meta("r1", "acme", "t"), step=1, usage=Usage(cost_usd=2.0), source="model")
    )
    assert await run.route(decided("c1")) == ["ToolCallRejected", "RunResumed"]
    view = await run.router.views.view("r1")
    assert view.call("c1").rejection[0] == "budget"  # type: ignore[union-attr]


async def test_a_decision_for_an_unknown_call_is_ignored(run: Run) -> None:
    assert await run.route(decided("c404")) == ["ApprovalDecisionIgnored"]
    view = await run.router.views.view("r1")
    assert view.call("c404") is None and list(view.ignored_decisions.values()) == ["unknown_approval"]
