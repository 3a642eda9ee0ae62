"""The operations people use on runs: each validates against the run, then appends one event."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from agentstream.interventions import InterventionError, Interventions
from handlers.intake import run_id_for
from projections.builtin import builtin_projections
from projections.projector import Projector
from projections.stores.sqlite import SqliteProjectionStore
from streams.backends import open_log
from streams.codec import EventCodec
from streams.envelope import now, root_meta
from streams.events import (
    ApprovalRequested,
    Budget,
    Event,
    PlanProposed,
    RunSuspended,
    TaskSubmitted,
    ToolCallRequested,
    Usage,
)
from streams.registry import EmbeddedSchemaRegistry
from streams.topics import Topics

pytestmark = pytest.mark.unit


class World:
    """A SQLite log, the views projected from it, and the interventions over both."""

    def __init__(self, tmp_path: Path) -> None:
        self.topics = Topics("t", 2)
        self.log = open_log(f"sqlite://{tmp_path}/log.db")
        self.registry = EmbeddedSchemaRegistry(tmp_path / "registry.db")
        self.codec = EventCodec(self.registry)
        self.store = SqliteProjectionStore(tmp_path / "views.db")
        self.projector = Projector(
            self.log, self.codec, self.store, builtin_projections(), topic=self.topics.events
        )
        self.people = Interventions(self.log, self.codec, self.topics, self.store, producer="test")

    async def add(self, *events: Event) -> None:
        for event in events:
            await self.people._append(event)
        await self.projector.run_until_caught_up()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = World(tmp_path)
    for spec in w.topics.specs():
        await w.log.create_topic(spec)
    await w.projector.start()
    yield w
    await w.store.close()
    await w.log.close()
    await w.registry.aclose()


def submitted(run_id: str, tenant: str = "acme", budget: Budget | None = None) -> TaskSubmitted:
    return TaskSubmitted(meta=root_meta(run_id, tenant, "test"), goal="g", budget=budget or Budget())


def waiting(
    run_id: str, *, tool: str = "send_email", call: str = "c1", expires_in: float = 60
) -> list[Event]:
    m = root_meta(run_id, "acme", "test")
    events: list[Event] = [
        PlanProposed(meta=m, step=1, thought="", model="m", usage=Usage(), based_on_event_id="x"),
        ToolCallRequested(
            meta=root_meta(run_id, "acme", "t"),
            step=1,
            tool_call_id=call,
            tool=tool,
            arguments_json='{"question": "why?"}',
        ),
    ]
    if tool == "ask_human":
        return [
            *events,
            RunSuspended(meta=root_meta(run_id, "acme", "t"), reason="ask_human", tool_call_id=call),
        ]
    return [
        *events,
        ApprovalRequested(
            meta=root_meta(run_id, "acme", "t"),
            approval_id=f"a-{call}",
            tool_call_id=call,
            tool=tool,
            arguments_json="{}",
            arguments_digest="d1",
            risk_tier="high",
            reason="policy",
            expires_at=now() + timedelta(seconds=expires_in),
        ),
        RunSuspended(
            meta=root_meta(run_id, "acme", "t"), reason="approval", approval_id=f"a-{call}", tool_call_id=call
        ),
    ]


async def test_decide_validates_then_appends(world: World) -> None:
    await world.add(submitted("r1"), *waiting("r1"))
    with pytest.raises(InterventionError, match="no approval nope") as missing:
        await world.people.decide("acme", "nope", "approved", "alice")
    assert missing.value.code == "not_found"
    with pytest.raises(InterventionError, match="no approval a-c1"):  # another tenant's is unknown
        await world.people.decide("globex", "a-c1", "approved", "alice")
    with pytest.raises(InterventionError, match="approved or denied") as bad:
        await world.people.decide("acme", "a-c1", "expired", "alice")  # type: ignore[arg-type]
    assert bad.value.code == "invalid"
    with pytest.raises(InterventionError, match="needs a reviewer"):
        await world.people.decide("acme", "a-c1", "approved", "")
    with pytest.raises(InterventionError, match="other arguments"):
        await world.people.decide("acme", "a-c1", "approved", "alice", arguments_digest="d2")
    with pytest.raises(InterventionError, match="no approval zz in run r1"):
        await world.people.decide("acme", "zz", "approved", "alice", run_id="r1")

    event = await world.people.decide("acme", "a-c1", "denied", "alice", "no", arguments_digest="d1")
    assert (event.tool_call_id, event.arguments_digest, event.comment) == ("c1", "d1", "no")
    with pytest.raises(InterventionError, match="already decided: denied by alice") as again:
        await world.people.decide("acme", "a-c1", "approved", "bob")
    assert again.value.code == "conflict"
    await world.projector.run_until_caught_up()
    assert await world.people.approvals("acme") == []
    assert [a.status for a in await world.people.approvals("acme", None)] == ["denied"]


async def test_answer_needs_one_open_question(world: World) -> None:
    await world.add(submitted("r1"))
    with pytest.raises(InterventionError, match="no single open question \\(none\\)"):
        await world.people.answer("r1", "x", "bo")
    await world.add(
        *waiting("r1", tool="ask_human", call="q1"), *waiting("r1", tool="ask_human", call="q2")[1:]
    )
    assert [q.question for q in await world.people.questions("r1")] == ["why?", "why?"]
    with pytest.raises(InterventionError, match="2; name one"):
        await world.people.answer("r1", "x", "bo")
    with pytest.raises(InterventionError, match="no open question q9"):
        await world.people.answer("r1", "x", "bo", tool_call_id="q9")
    answered = await world.people.answer("r1", "because", "bo", tool_call_id="q2")
    assert (answered.tool_call_id, answered.answer, answered.answered_by) == ("q2", "because", "bo")
    assert (await world.people.answer("r1", "ok", "bo")).tool_call_id == "q1"


async def test_cancel_and_goal_change_need_a_live_run_of_the_tenant(world: World) -> None:
    with pytest.raises(InterventionError, match="no run r9") as missing:
        await world.people.cancel("r9", "alice")
    assert missing.value.code == "not_found"
    await world.add(submitted("r1"))
    with pytest.raises(InterventionError, match="no run r1"):
        await world.people.change_goal("r1", "other", "alice", tenant="globex")
    with pytest.raises(InterventionError, match="empty"):
        await world.people.change_goal("r1", " ", "alice")
    assert (await world.people.change_goal("r1", "other", "alice", tenant="acme")).goal == "other"
    assert (await world.people.cancel("r1", "alice", "done")).requested_by == "alice"
    for attempt in (
        world.people.cancel("r1", "alice"),
        world.people.change_goal("r1", "x", "alice"),
        world.people.answer("r1", "x", "alice"),
    ):
        with pytest.raises(InterventionError, match="already ended \\(cancelled\\)"):
            await attempt


async def test_the_timer_expires_overdue_requests_once(world: World) -> None:
    await world.add(
        submitted("r1"), *waiting("r1", expires_in=-1), *waiting("r1", call="c2", expires_in=3600)[1:]
    )
    [expired] = await world.people.expire_due()
    assert (expired.approval_id, expired.decision, expired.reviewer) == ("a-c1", "expired", "system")
    assert await world.people.expire_due() == [], "the run's view already shows it decided"
    await world.projector.run_until_caught_up()
    assert await world.people.expire_due() == []
    assert [a.approval_id for a in await world.people.approvals("acme")] == ["a-c2"]
    later = await world.people.expire_due(now() + timedelta(hours=2))
    assert [e.approval_id for e in later] == ["a-c2"]


async def test_submit_publishes_to_the_tasks_topic_for_the_intake(world: World) -> None:
    task = await world.people.submit(submitted("chosen", budget=Budget(max_steps=10)))
    assert task.meta.run_id == run_id_for("acme", None, task.meta.event_id), "the intake's run id"
    assert task.budget.max_steps == 10, "ceilings are the intake's to apply"
    records = [r for p in range(2) for r in await world.log.read(world.topics.tasks, p, 0, 10)]
    assert [r.key for r in records] == [task.meta.run_id.encode()]
    assert [r for p in range(2) for r in await world.log.read(world.topics.events, p, 0, 10)] == []
    for bad, message in (
        (submitted("x", tenant=" "), "needs a tenant"),
        (submitted("x").model_copy(update={"goal": " "}), "needs a goal"),
    ):
        with pytest.raises(InterventionError, match=message) as refused:
            await world.people.submit(bad)
        assert refused.value.code == "invalid"


async def test_listing_approvals_needs_the_approvals_view(world: World) -> None:
    no_views = Interventions(world.log, world.codec, world.topics)
    with pytest.raises(InterventionError, match="needs the approvals view"):
        await no_views.approvals("acme")
