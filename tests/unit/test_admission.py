"""Admission: the intake applies the tenant's ceilings and queues runs of capped tenants;
the admission timer admits them in submission order within the cap, never twice."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentstream.admission import Admissions
from agentstream.interventions import Interventions
from handlers.intake import TaskIntake
from handlers.policy import TenantPolicies, ToolPolicy
from projections.builtin import builtin_projections
from projections.projector import Projector
from projections.run_state import RunStates
from projections.run_view import RunView, RunViews
from projections.stores.sqlite import SqliteProjectionStore
from streams.backends import open_log
from streams.codec import EventCodec
from streams.envelope import new_run_id, root_meta
from streams.events import Budget, RunAdmitted, RunCompleted, RunQueued, TaskSubmitted, Usage
from streams.registry import EmbeddedSchemaRegistry
from streams.topics import Topics
from streams.worker import Worker

pytestmark = pytest.mark.unit

POLICIES = TenantPolicies(
    tenants={"acme": ToolPolicy.build({"max_concurrent_runs": 2, "budget": {"max_steps": 3, "max_usd": 0.5}})}
)


class Platform:
    """A SQLite log with the intake, the views and the admission timer, stepped by hand."""

    def __init__(self, tmp_path: Path) -> None:
        self.topics = Topics("t", 3)
        self.log = open_log(f"sqlite://{tmp_path}/log.db")
        self.registry = EmbeddedSchemaRegistry(tmp_path / "registry.db")
        self.codec = EventCodec(self.registry)
        self.store = SqliteProjectionStore(tmp_path / "views.db")
        self.projector = Projector(
            self.log, self.codec, self.store, builtin_projections(), topic=self.topics.events
        )
        self.views = RunViews(self.log, self.codec, self.topics)
        self.intake = Worker(
            self.log,
            self.codec,
            TaskIntake(self.log, self.codec, self.topics, self.views, POLICIES),
            topics=self.topics,
            input_topics=[self.topics.tasks],
            poll_timeout_s=0.05,
        )
        self.people = Interventions(self.log, self.codec, self.topics, self.store, producer="test")
        self.states = RunStates(self.store)

    def timer(self) -> Admissions:
        return Admissions(self.log, self.codec, self.topics, self.store, POLICIES)

    async def submit(self, tenant: str, goal: str, budget: Budget | None = None) -> str:
        task = TaskSubmitted(
            meta=root_meta(new_run_id(), tenant, "test"), goal=goal, budget=budget or Budget(max_steps=10)
        )
        return (await self.people.submit(task)).meta.run_id

    async def settle(self) -> None:
        """Start every submitted run and bring the views up to date."""
        while await self.intake.step():
            pass
        await self.projector.run_until_caught_up()

    async def view(self, run_id: str) -> RunView:
        return await self.views.view(run_id)

    async def end(self, run_id: str) -> None:
        view = await self.view(run_id)
        done = RunCompleted(
            meta=root_meta(run_id, view.tenant_id, "test"), answer="ok", steps=1, usage=Usage()
        )
        await self.people._append(done)


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Platform]:
    p = Platform(tmp_path)
    for spec in p.topics.specs():
        await p.log.create_topic(spec)
    await p.projector.start()
    await p.intake.start()
    yield p
    await p.intake.stop()
    await p.store.close()
    await p.log.close()
    await p.registry.aclose()


async def test_the_intake_caps_budgets_and_queues_runs_of_capped_tenants(platform: Platform) -> None:
    acme = await platform.submit("acme", "big", Budget(max_steps=50, max_usd=None, max_tokens=900))
    small = await platform.submit("acme", "small", Budget(max_steps=2, max_usd=0.1))
    globex = await platform.submit("globex", "free", Budget(max_steps=50))
    await platform.settle()

    big = await platform.view(acme)
    assert [e.type_name for e in await platform.views.events(acme)] == ["TaskSubmitted", "RunQueued"]
    assert (big.status, big.max_steps, big.max_usd, big.max_tokens) == ("queued", 3, 0.5, 900)
    assert big.queued_reason is not None and "at most 2" in big.queued_reason
    assert ((await platform.view(small)).max_steps, (await platform.view(small)).max_usd) == (2, 0.1)
    other = await platform.view(globex)
    assert [e.type_name for e in await platform.views.events(globex)] == ["TaskSubmitted"]
    assert (other.status, other.max_steps) == ("running", 50), "another tenant's policy is not acme's"
    queued = await platform.states.list("acme", status="queued")
    assert sorted(s.run_id for s in queued) == sorted([acme, small])


async def test_queued_runs_are_admitted_oldest_first_within_the_cap(platform: Platform) -> None:
    runs = [await platform.submit("acme", f"task {i}") for i in range(5)]
    await platform.settle()
    assert [await platform.states.queue_position(s) for s in await platform.states.queued("acme", 10)] == [
        1,
        2,
        3,
        4,
        5,
    ]
    order = [s.run_id for s in await platform.states.queued("acme", 10)]
    assert sorted(order) == sorted(runs)

    timer = platform.timer()
    first = await timer.admit_due()
    assert [e.meta.run_id for e in first] == order[:2]
    assert [e.in_flight for e in first] == [0, 1] and {e.max_concurrent_runs for e in first} == {2}
    # The run-state view has not seen the admissions yet: nothing more is admitted, by
    # this timer or another one.
    assert await timer.admit_due() == []
    assert await platform.timer().admit_due() == []
    await platform.projector.run_until_caught_up()
    depth = await platform.states.queue("acme")
    assert (depth.queued, depth.in_flight) == (3, 2)
    assert await timer.admit_due() == []

    await platform.end(order[0])
    await platform.projector.run_until_caught_up()
    assert [e.meta.run_id for e in await timer.admit_due()] == [order[2]]
    await platform.projector.run_until_caught_up()
    assert (await platform.view(order[2])).status == "running"
    assert [await platform.states.queue_position(s) for s in await platform.states.queued("acme", 10)] == [
        1,
        2,
    ]

    # A queued run cancelled while it waits gives up its place and takes no slot.
    await platform.people.cancel(order[3], "test")
    await platform.end(order[1])
    await platform.projector.run_until_caught_up()
    assert [e.meta.run_id for e in await timer.admit_due()] == [order[4]]
    await platform.projector.run_until_caught_up()
    statuses = [(await platform.view(r)).status for r in order]
    assert statuses == ["completed", "completed", "running", "cancelled", "running"]
    depth = await platform.states.queue("acme")
    assert (depth.queued, depth.in_flight) == (0, 2)


async def test_racing_timers_admit_a_run_once(platform: Platform) -> None:
    run_id = await platform.submit("acme", "only")
    await platform.settle()
    # Two serving processes scan the same view at the same moment.
    one, two = platform.timer(), platform.timer()
    states = await platform.states.queued("acme", 10)
    assert [s.run_id for s in states] == [run_id]
    both = [*await one.admit("acme"), *await two.admit("acme")]
    assert len(both) == 1, "the second timer sees the admission on the log"
    again = RunAdmitted(meta=both[0].meta, in_flight=0, max_concurrent_runs=2)
    await platform.people._append(again)  # a duplicate that slipped through
    await platform.projector.run_until_caught_up()
    view = await platform.view(run_id)
    assert view.status == "running" and view.admitted_at == both[0].meta.occurred_at
    # A run listed before the view moved on is brought up to the log without folding twice.
    current = await one._current(states[0])
    assert (current.status, current.events) == ("running", view.events)
    assert (await platform.states.queue("acme")).in_flight == 1


async def test_a_late_queued_event_never_stops_a_started_run() -> None:
    meta = root_meta("r", "acme", "test")
    events = [
        TaskSubmitted(meta=meta, goal="g", budget=Budget()),
        RunQueued(meta=meta, reason="cap", max_concurrent_runs=1),
        RunAdmitted(meta=meta, in_flight=0, max_concurrent_runs=1),
        RunQueued(meta=meta, reason="replayed", max_concurrent_runs=1),
    ]
    view = RunView.fold("r", events)
    assert (view.status, view.queued_reason) == ("running", "cap")
    done = RunCompleted(meta=meta, answer="a", steps=1, usage=Usage())
    assert RunView.fold("r", [*events, done, RunAdmitted(meta=meta, in_flight=0)]).status == "completed"
