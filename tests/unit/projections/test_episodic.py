"""The episodic projection: every event, found by run, type or time, per tenant."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest

from projections.episodic import EVENTS, Episodes, EpisodicEvent, EpisodicProjection
from projections.stores.sqlite import SqliteProjectionStore
from streams.events import AgentMessage, Event
from tests.support.projections import apply_events, records_for
from tests.support.runs import START, meta, simulate

pytestmark = pytest.mark.unit


async def test_every_event_is_kept_once_with_its_position(store: SqliteProjectionStore) -> None:
    events = simulate(seed=2, runs=25)
    records = records_for(events)
    await apply_events(store, [EpisodicProjection()], events, batch=9, records=records)
    rows = await store.scan(EVENTS)
    assert len(rows) == len(events)
    assert {r["event_id"] for r in rows} == {e.meta.event_id for e in events}
    episodes = Episodes(store)
    first, record = events[0], records[0]
    found = await episodes.by_run(first.meta.tenant_id, first.meta.run_id, limit=1)
    assert (found[0].partition, found[0].offset, found[0].type) == (
        record.partition,
        record.offset,
        first.type_name,
    )
    assert found[0].event() == first
    assert found[0].data["meta"]["event_id"] == first.meta.event_id


async def test_by_run_is_in_log_order_and_pages(store: SqliteProjectionStore) -> None:
    events = simulate(seed=4, runs=10)
    await apply_events(store, [EpisodicProjection()], events)
    run = [e for e in events if e.meta.run_id == events[0].meta.run_id]
    tenant, run_id = run[0].meta.tenant_id, run[0].meta.run_id
    episodes = Episodes(store)
    everything = await episodes.by_run(tenant, run_id)
    assert [e.event_id for e in everything] == [e.meta.event_id for e in run]
    paged: list[EpisodicEvent] = []
    after = None
    while page := await episodes.by_run(tenant, run_id, after_offset=after, limit=3):
        paged.extend(page)
        after = page[-1].offset
    assert [e.event_id for e in paged] == [e.event_id for e in everything]


async def test_by_type_and_time_range_are_bounded(store: SqliteProjectionStore) -> None:
    events = simulate(seed=6, runs=30, tenants=("acme",))
    await apply_events(store, [EpisodicProjection()], events, batch=100)
    episodes = Episodes(store)
    counts = Counter(e.type_name for e in events)
    plans = await episodes.by_type("acme", "PlanProposed", limit=10_000)
    assert len(plans) == counts["PlanProposed"]
    assert [p.occurred_at for p in plans] == sorted((p.occurred_at for p in plans), reverse=True)
    assert len(await episodes.by_type("acme", "PlanProposed", limit=3)) == 3
    since, until = events[10].meta.occurred_at, events[40].meta.occurred_at
    window = await episodes.between("acme", since, until, limit=10_000)
    assert [e.event_id for e in window] == [e.meta.event_id for e in events[10:40]]
    typed = await episodes.by_type("acme", "PlanProposed", since=since, until=until, newest_first=False)
    expected = [e.meta.event_id for e in events[10:40] if e.type_name == "PlanProposed"]
    assert [e.event_id for e in typed] == expected
    with pytest.raises(ValueError, match="limit"):
        await episodes.between("acme", limit=100_000)


async def test_events_at_the_same_instant_keep_a_stable_order(store: SqliteProjectionStore) -> None:
    events: list[Event] = [
        AgentMessage(meta=meta(f"r{i}", "acme", 1), from_agent="a", to_agent="b", content=str(i))
        for i in range(5)
    ]
    await apply_events(store, [EpisodicProjection()], events)
    episodes = Episodes(store)
    once = await episodes.between("acme", START, START + timedelta(seconds=2))
    twice = await episodes.between("acme", START, START + timedelta(seconds=2))
    assert [e.event_id for e in once] == [e.event_id for e in twice]
    assert len(once) == 5
