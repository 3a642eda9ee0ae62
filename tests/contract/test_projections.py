"""Projections on every event log: each event applied exactly once, rebuilds equal to live views,
and a projector killed with SIGKILL at random instants loses and doubles nothing.

Each runs on every pairing of an event log (the `backend` fixture) and a projection store
(the `store_backend` fixture: SQLite, and Cassandra when a node is given).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from projections.builtin import builtin_projections
from projections.cost_ledger import CostLedger
from projections.episodic import EVENTS
from projections.projector import Projector
from projections.run_state import RunStates
from projections.stores.base import ProjectionStore
from streams.codec import EventCodec
from streams.events import Event
from streams.log import EventLog, OutgoingRecord
from tests.support.backends import Backend
from tests.support.projections import Expected, snapshot
from tests.support.runs import publish, simulate
from tests.support.stores import StoreBackend

ROOT = Path(__file__).resolve().parents[2]
POISON = [b"", b"\x01not-avro", b"\x00\x00\x0f\x42\x3fbody"]


def _seed() -> int:
    seed = int(os.environ.get("AGENTSTREAM_TEST_SEED", time.time_ns() % 1_000_000))
    print(f"AGENTSTREAM_TEST_SEED={seed}")  # shown on failure, to replay the same run
    return seed


def _projector(
    backend: Backend, log: EventLog, codec: EventCodec, store: ProjectionStore, batch: int
) -> Projector:
    return Projector(log, codec, store, builtin_projections(), topic=backend.topics.events, batch_size=batch)


async def _assert_exact(store: ProjectionStore, events: Sequence[Event]) -> None:
    """Nothing lost, nothing doubled: counts and money exactly as in the events."""
    expected = Expected.of(events)
    rows = await store.scan(EVENTS)
    assert len(rows) == len(events), "one episodic row per event"
    assert {r["event_id"] for r in rows} == {e.meta.event_id for e in events}
    ledger, states = CostLedger(store), RunStates(store)
    for tenant, nanos in expected.nanos_by_tenant.items():
        cost = await ledger.summary(tenant)
        assert (cost.cost_nano_usd, cost.charges) == (nanos, expected.charges_by_tenant[tenant]), tenant
        assert cost.total_tokens == expected.tokens_by_tenant[tenant]
    for (tenant, run_id), count in expected.events_by_run.items():
        state = await states.get(tenant, run_id)
        assert state is not None and state.events == count, (tenant, run_id)


async def _rebuilt_elsewhere(
    backend: Backend, log: EventLog, codec: EventCodec, stores: StoreBackend, label: str
) -> dict[str, list[dict[str, object]]]:
    fresh = stores.open(label)
    try:
        await _projector(backend, log, codec, fresh, 5000).run_until_caught_up()
        return await snapshot(fresh, builtin_projections())
    finally:
        await fresh.close()


async def test_each_event_is_applied_once_across_restarts(
    backend: Backend, log: EventLog, store: ProjectionStore, store_backend: StoreBackend
) -> None:
    codec = backend.codec()
    events = simulate(seed=31, runs=20)
    await publish(log, codec, backend.topics.events, events)
    first = _projector(backend, log, codec, store, 40)
    await first.start()
    for _ in range(3):
        await first.step()
    assert 0 < first.stats.records < len(events)
    again = store_backend.open()  # a new process would open the store afresh
    try:
        second = _projector(backend, log, codec, again, 40)
        stats = await second.run_until_caught_up()
        assert first.stats.records + stats.records == len(events)
        assert (await second.run_until_caught_up()).records == 0, "caught up: nothing is applied twice"
    finally:
        await again.close()
    await _assert_exact(store, events)


async def test_rebuild_equals_live_after_a_long_randomised_run(
    backend: Backend, log: EventLog, store: ProjectionStore, store_backend: StoreBackend
) -> None:
    rng = random.Random(_seed())
    codec = backend.codec()
    topic = backend.topics.events
    events = simulate(seed=rng.randrange(1 << 30), runs=rng.randint(30, 45))
    assert len(events) >= 400
    projector = _projector(backend, log, codec, store, 10)
    published = 0
    while published < len(events):
        chunk = rng.randint(1, 60)
        await publish(log, codec, topic, events[published : published + chunk])
        published += chunk
        if rng.random() < 0.1:
            await log.append([OutgoingRecord(topic, b"poison", rng.choice(POISON))])
        if rng.random() < 0.1:
            projector = _projector(backend, log, codec, store, 10)  # a restart
        for _ in range(rng.randint(0, 3)):
            projector.batch_size = rng.randint(1, 80)
            await projector.step()
    await projector.run_until_caught_up()
    live = await snapshot(store, projector.projections)
    await _assert_exact(store, events)

    assert await _rebuilt_elsewhere(backend, log, codec, store_backend, "fresh") == live
    for projection in projector.projections:
        await projector.rebuild(projection.name)
        assert await snapshot(store, projector.projections) == live, f"rebuilt {projection.name}"
    projector.batch_size = 7
    await projector.rebuild()
    assert await snapshot(store, projector.projections) == live, "rebuilt all, in small batches"


async def test_two_projectors_on_one_store_apply_each_event_once(
    backend: Backend, log: EventLog, store: ProjectionStore, store_backend: StoreBackend
) -> None:
    codec = backend.codec()
    events = simulate(seed=32, runs=20)
    await publish(log, codec, backend.topics.events, events)
    # Two processes, as far as the log and the store can tell: each has its own connections.
    other, other_log = store_backend.open(), backend.open()
    one, two = _projector(backend, log, codec, store, 25), _projector(backend, other_log, codec, other, 25)

    async def drain(projector: Projector) -> None:
        await projector.start()
        while True:
            read = await projector.step()
            await asyncio.sleep(0)  # let the other one in between batches
            if not read:
                return

    try:
        await asyncio.gather(drain(one), drain(two))
        await one.run_until_caught_up()
    finally:
        await other.close()
        await other_log.close()
    await _assert_exact(store, events)


async def test_a_reader_waits_for_the_event_it_reacts_to(
    backend: Backend, log: EventLog, store: ProjectionStore
) -> None:
    codec = backend.codec()
    topic = backend.topics.events
    projector = _projector(backend, log, codec, store, 100)
    stop = asyncio.Event()
    running = asyncio.create_task(projector.run(stop))
    try:
        for event in simulate(seed=33, runs=3)[:12]:
            [(tp, offset)] = await log.append(
                [OutgoingRecord(topic, event.meta.run_id.encode(), await codec.encode(topic, event))]
            )
            await store.wait_for("run_state", tp, offset, timeout_s=20)
            state = await RunStates(store).get(event.meta.tenant_id, event.meta.run_id)
            assert state is not None and state.last_event_id == event.meta.event_id
    finally:
        stop.set()
        await running


# -- SIGKILL ---------------------------------------------------------------------------

KILLS = 15


def _spawn(backend: Backend, store_url: str, home: Path, log_file: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "AGENTSTREAM_HOME": str(home),
        "AGENTSTREAM_LOG_URL": backend.url,
        "AGENTSTREAM_REGISTRY_URL": f"sqlite://{backend.registry_path}",
        "AGENTSTREAM_STORE_URL": store_url,
        "AGENTSTREAM_TOPIC_PREFIX": backend.topics.prefix,
        "AGENTSTREAM_PARTITIONS": str(backend.topics.partitions),
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "agentstream.cli_projections", "run", "--batch-size", "3"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log_file.open("ab"),
    )


async def _applied_and_end(backend: Backend, log: EventLog, store: ProjectionStore) -> tuple[int, int]:
    """The least any projection has applied, and the log's end, summed over partitions."""
    end = sum([await log.end_offset(backend.topics.events, p) for p in range(backend.topics.partitions)])
    applied = min([sum((await store.offsets(p.name)).values()) for p in builtin_projections()])
    return applied, end


async def _started_applying(
    backend: Backend,
    log: EventLog,
    store: ProjectionStore,
    before: int,
    projector: subprocess.Popen[bytes],
) -> None:
    deadline = time.monotonic() + 60
    while (await _applied_and_end(backend, log, store))[0] == before:
        assert projector.poll() is None, "the projector died by itself"
        assert time.monotonic() < deadline, "the projector never applied anything"
        await asyncio.sleep(0.005)


@pytest.mark.slow
async def test_sigkill_at_random_points_loses_and_doubles_nothing(
    backend: Backend, log: EventLog, store_backend: StoreBackend, tmp_path: Path
) -> None:
    rng = random.Random(_seed())
    codec = backend.codec()
    topic = backend.topics.events
    # Cassandra applies a few hundred events a second on a shared 2-core machine: a smaller
    # stream keeps the catch-up inside the deadline while the kills still land mid-stream.
    events = simulate(seed=rng.randrange(1 << 30), runs=200 if store_backend.name == "sqlite" else 80)
    store_url = store_backend.url("killed")
    if store_backend.name == "sqlite":
        store_url += "?synchronous=full"
    watcher = store_backend.open("killed")
    projector_log = tmp_path / "projector.log"
    chunks = [events[len(events) * i // KILLS : len(events) * (i + 1) // KILLS] for i in range(KILLS)]
    kills_mid_stream = 0
    try:
        for chunk in chunks:
            # Each round brings a backlog, and more arrives while the projector works on it.
            half = len(chunk) // 2
            await publish(log, codec, topic, chunk[:half])
            if rng.random() < 0.5:
                await log.append([OutgoingRecord(topic, b"poison", rng.choice(POISON))])
            before, _ = await _applied_and_end(backend, log, watcher)
            projector = _spawn(backend, store_url, tmp_path / "home", projector_log)
            await _started_applying(backend, log, watcher, before, projector)
            await publish(log, codec, topic, chunk[half:], chunk=20)
            await asyncio.sleep(rng.uniform(0, 0.1))
            projector.send_signal(signal.SIGKILL)
            projector.wait()
            applied, end = await _applied_and_end(backend, log, watcher)
            if applied < end:
                kills_mid_stream += 1

        projector = _spawn(backend, store_url, tmp_path / "home", projector_log)
        try:
            deadline = time.monotonic() + 300
            while True:
                applied, end = await _applied_and_end(backend, log, watcher)
                if applied == end:
                    break
                assert projector.poll() is None, projector_log.read_text()[-3000:]
                assert time.monotonic() < deadline, f"caught up only to {applied} of {end}"
                await asyncio.sleep(0.2)
        finally:
            projector.send_signal(signal.SIGTERM)
            # -SIGTERM: the signal came before the projector had set up its handler.
            assert projector.wait(timeout=30) in (0, -signal.SIGTERM), projector_log.read_text()[-3000:]

        print(f"{kills_mid_stream} of {KILLS} kills landed mid-stream")
        assert kills_mid_stream >= KILLS // 2, (
            f"only {kills_mid_stream} kills landed while work was in flight"
        )
        await _assert_exact(watcher, events)
        killed = await snapshot(watcher, builtin_projections())
        assert await _rebuilt_elsewhere(backend, log, codec, store_backend, "fresh") == killed
    finally:
        await watcher.close()
