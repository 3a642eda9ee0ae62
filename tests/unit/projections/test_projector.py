"""The projector on the embedded log: skipping, poison records, rebuilds, conflicts, waiting."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from projections.builtin import builtin_projections
from projections.cost_ledger import CostLedger, CostLedgerProjection
from projections.episodic import EVENTS, EpisodicProjection
from projections.errors import StoreError
from projections.projector import FAILURES, Applied, Projection, Projector
from projections.run_state import RunStateProjection, RunStates
from projections.stores.base import Table, ViewTransaction
from projections.stores.sqlite import SqliteProjectionStore
from streams.codec import EventCodec
from streams.events import Event
from streams.log import LogRecord, OutgoingRecord
from streams.registry import EmbeddedSchemaRegistry
from streams.sqlite_log import SqliteEventLog
from streams.topics import Topics
from tests.support.events import message
from tests.support.projections import Expected, snapshot
from tests.support.runs import publish, simulate

pytestmark = pytest.mark.unit
TOPICS = Topics("unit", 3)


COUNTS = Table(
    "picky_counts",
    columns={"tenant_id": "text", "run_id": "text", "count": "int"},
    key=("tenant_id", "run_id"),
)


class Env:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.log = SqliteEventLog(tmp_path / "log.db")
        self.codec = EventCodec(EmbeddedSchemaRegistry(tmp_path / "registry.db"))
        self.store = SqliteProjectionStore(tmp_path / "views.db")

    def projector(self, projections: Sequence[Projection] | None = None, **kwargs: int) -> Projector:
        return Projector(
            self.log,
            self.codec,
            self.store,
            builtin_projections() if projections is None else projections,
            topic=TOPICS.events,
            **kwargs,  # type: ignore[arg-type]
        )

    async def publish(self, events: Sequence[Event]) -> None:
        await publish(self.log, self.codec, TOPICS.events, events)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    opened = Env(tmp_path)
    for spec in TOPICS.specs():
        await opened.log.create_topic(spec)
    yield opened
    await opened.store.close()
    await opened.log.close()


async def _check_exact(env: Env, events: Sequence[Event]) -> None:
    expected = Expected.of(events)
    rows = await env.store.scan(EVENTS)
    assert len(rows) == len(events)
    assert len({r["event_id"] for r in rows}) == len(events)
    for tenant, nanos in expected.nanos_by_tenant.items():
        assert (await CostLedger(env.store).summary(tenant)).cost_nano_usd == nanos
    for (tenant, run_id), count in expected.events_by_run.items():
        state = await RunStates(env.store).get(tenant, run_id)
        assert state is not None and state.events == count


async def test_types_no_projection_consumes_are_skipped_without_decoding(env: Env) -> None:
    events = simulate(seed=1, runs=20)
    await env.publish(events)
    decoded = 0
    decode = env.codec.decode

    async def counting(data: bytes) -> Event:
        nonlocal decoded
        decoded += 1
        return await decode(data)

    env.codec.decode = counting  # type: ignore[method-assign]
    stats = await env.projector([CostLedgerProjection()], batch_size=50).run_until_caught_up()
    consumed = sum(1 for e in events if e.type_name in CostLedgerProjection.consumes)
    assert decoded == stats.applied == consumed
    assert stats.skipped == len(events) - consumed
    assert stats.records == len(events)


async def test_undecodable_records_are_counted_and_passed(env: Env) -> None:
    events = simulate(seed=2, runs=10)
    await env.publish(events[:50])
    poison = [
        b"",
        b"\x01not-our-format",
        b"\x00" + struct.pack(">I", 999_999) + b"body",
        b"\x00\x00\x00\x00\x01\xff",
    ]
    await env.log.append([OutgoingRecord(TOPICS.events, b"run-00000", value) for value in poison])
    await env.publish(events[50:])
    stats = await env.projector(batch_size=7).run_until_caught_up()
    assert stats.undecodable == len(poison)
    assert stats.applied == len(events)
    await _check_exact(env, events)
    status = await env.projector().status()
    assert all(s.lag == 0 for s in status)


async def test_events_without_a_tenant_are_kept_by_no_view(env: Env) -> None:
    events = simulate(seed=2, runs=3)
    orphan = message("run-00000", "who owns me?", tenant="")
    await env.publish([*events[:5], orphan, *events[5:]])
    stats = await env.projector().run_until_caught_up()
    assert (stats.tenantless, stats.applied) == (1, len(events))
    await _check_exact(env, events)


async def test_a_batch_that_fails_in_the_store_writes_nothing(env: Env) -> None:
    events = simulate(seed=3, runs=20)
    await env.publish(events)

    class Flaky(Projection):
        name = "flaky"
        consumes = frozenset({"RunCompleted"})
        tables = ()
        failures = 1

        async def apply(self, event: Event, record: LogRecord, txn: ViewTransaction) -> None:
            if self.failures:
                self.failures -= 1
                raise StoreError("the disk is busy")

    flaky = Flaky()
    projector = env.projector([*builtin_projections(), flaky], batch_size=10_000)
    with pytest.raises(StoreError):
        await projector.run_until_caught_up()
    assert await env.store.scan(EVENTS) == []
    for projection in projector.projections:
        assert await env.store.offsets(projection.name) == {}
    await projector.run_until_caught_up()
    await _check_exact(env, events)


class Picky(Projection):
    """Counts messages per run, and has a bug: it raises, half-way, on one message."""

    name = "picky"
    consumes = frozenset({"AgentMessage"})
    tables = (COUNTS,)
    poison = "poison"

    async def apply(self, event: Event, record: LogRecord, txn: ViewTransaction) -> None:
        key = (event.meta.tenant_id, event.meta.run_id)
        row = await txn.get(COUNTS, key)
        count = (row["count"] if row else 0) + 1
        txn.put(COUNTS, {"tenant_id": key[0], "run_id": key[1], "count": count})
        if getattr(event, "content", "") == self.poison:
            raise KeyError("a bug in the fold")


async def test_an_event_the_fold_raises_on_is_set_aside_and_the_rest_applied(env: Env) -> None:
    events = simulate(seed=5, runs=10)
    sick = message("r-sick", "poison")
    fine = [message("r-sick", f"fine {i}") for i in range(3)]
    await env.publish([*events, fine[0], sick, *fine[1:]])
    picky = Picky()
    projector = env.projector([*builtin_projections(), picky], batch_size=10_000)
    stats = await projector.run_until_caught_up()
    assert stats.failed == 1
    counts = {r["run_id"]: r["count"] for r in await env.store.scan(COUNTS)}
    assert counts["r-sick"] == 3, "the poison event's half-done writes were undone; the others applied"
    [failure] = await env.store.scan(FAILURES)
    assert (failure["projection"], failure["event_id"], failure["type"]) == (
        "picky",
        sick.meta.event_id,
        "AgentMessage",
    )
    assert "KeyError" in failure["error"]
    await _check_exact(env, [*events, *fine, sick])  # the other views took every event
    status = {s.name: s for s in await projector.status()}
    assert status["picky"].failed == 1 and status["picky"].lag == 0
    assert status["run_state"].failed == 0

    picky.poison = "nothing is poison now"  # the fold is fixed: a rebuild applies it again
    await projector.rebuild("picky")
    counts = {r["run_id"]: r["count"] for r in await env.store.scan(COUNTS)}
    assert counts["r-sick"] == 4
    assert await env.store.scan(FAILURES) == []


async def test_a_restarted_projector_resumes_from_the_store_offsets(env: Env) -> None:
    events = simulate(seed=4, runs=30)
    await env.publish(events)
    first = env.projector(batch_size=20)
    for _ in range(5):
        await first.step()
    assert 0 < first.stats.records < len(events)
    second = env.projector(batch_size=20)
    stats = await second.run_until_caught_up()
    assert first.stats.records + stats.records == len(events)
    await _check_exact(env, events)


async def test_rebuilding_one_projection_leaves_the_others_alone(env: Env) -> None:
    events = simulate(seed=5, runs=30)
    await env.publish(events)
    projector = env.projector(batch_size=33)
    await projector.run_until_caught_up()
    live = await snapshot(env.store, projector.projections)
    offsets = {p.name: await env.store.offsets(p.name) for p in projector.projections}
    more = simulate(seed=6, runs=5, run_prefix="late")
    await env.publish(more)
    stats = await projector.rebuild("cost_ledger")
    assert stats.records == len(events) + len(more)
    for projection in projector.projections:
        if projection.name != "cost_ledger":
            assert await env.store.offsets(projection.name) == offsets[projection.name], "others did not move"
    await projector.run_until_caught_up()
    assert (await snapshot(env.store, projector.projections))["episodic_events"] != live["episodic_events"]
    await _check_exact(env, events + more)


async def test_a_new_projection_version_is_rebuilt_on_start(env: Env) -> None:
    events = simulate(seed=7, runs=15)
    await env.publish(events)
    await env.projector().run_until_caught_up()
    before = await snapshot(env.store, [RunStateProjection()])

    class RunStateV2(RunStateProjection):
        version = RunStateProjection.version + 1

    stats = await env.projector([RunStateV2()]).run_until_caught_up()
    assert stats.records == len(events), "applied again from offset 0"
    assert await snapshot(env.store, [RunStateProjection()]) == before


async def test_two_projectors_on_one_store_apply_each_event_once(env: Env) -> None:
    events = simulate(seed=8, runs=40)
    await env.publish(events)
    other_store = SqliteProjectionStore(env.tmp_path / "views.db")
    one = env.projector(batch_size=15)
    two = Projector(
        env.log, env.codec, other_store, builtin_projections(), topic=TOPICS.events, batch_size=15
    )

    async def drain(projector: Projector) -> None:
        await projector.start()
        while True:
            read = await projector.step()
            await asyncio.sleep(0)  # let the other one in between batches
            if not read:
                return

    await asyncio.gather(drain(one), drain(two))
    await one.run_until_caught_up()
    await other_store.close()
    await _check_exact(env, events)
    assert one.stats.conflicts + two.stats.conflicts > 0, "the projectors did race"


async def test_a_reader_waits_until_the_event_it_reacts_to_is_applied(env: Env) -> None:
    projector = env.projector([RunStateProjection(), EpisodicProjection()])
    stop = asyncio.Event()
    running = asyncio.create_task(projector.run(stop))
    try:
        events = simulate(seed=9, runs=3)
        codec, topic = env.codec, TOPICS.events
        records = [
            OutgoingRecord(topic, e.meta.run_id.encode(), await codec.encode(topic, e)) for e in events
        ]
        positions = await env.log.append(records)
        tp, offset = positions[-1]
        await env.store.wait_for("run_state", tp, offset, timeout_s=5)
        last = events[-1]
        state = await RunStates(env.store).get(last.meta.tenant_id, last.meta.run_id)
        assert state is not None and state.last_event_id == last.meta.event_id
        assert await env.store.applied("run_state", tp.topic, tp.partition) == offset + 1
    finally:
        stop.set()
        await running


async def test_status_shows_the_lag_per_partition(env: Env) -> None:
    events = simulate(seed=10, runs=10)
    await env.publish(events)
    projector = env.projector(batch_size=3)
    await projector.start()
    await projector.step()
    statuses = {s.name: s for s in await projector.status()}
    assert statuses["run_state"].end == len(events)
    assert statuses["run_state"].applied == 3
    assert statuses["run_state"].lag == len(events) - 3
    assert sum(p.end for p in statuses["episodic"].partitions) == len(events)


async def test_apply_batch_defaults_to_apply_per_event() -> None:
    seen: list[int] = []

    class Recorder(Projection):
        name = "recorder"
        consumes = frozenset({"AgentMessage"})
        tables = ()

        async def apply(self, event: Event, record: LogRecord, txn: ViewTransaction) -> None:
            seen.append(record.offset)

    items: list[Applied] = [
        (e, LogRecord("t", 0, i, None, b"", (), 0)) for i, e in enumerate(simulate(seed=1, runs=1)[:3])
    ]
    await Recorder().apply_batch(items, None)  # type: ignore[arg-type]
    assert seen == [0, 1, 2]
