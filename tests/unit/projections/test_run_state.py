"""The run state projection: RunView's fold, stored per run, listed per tenant."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import pytest

from projections.run_state import RUNS, RunStateProjection, RunStates, dump_view, load_view
from projections.run_view import RunView
from projections.stores.sqlite import SqliteProjectionStore
from streams.events import (
    ApprovalRequested,
    Budget,
    BudgetCharged,
    Event,
    PlanProposed,
    RunCompleted,
    TaskSubmitted,
    ToolCallRequested,
    Usage,
)
from tests.support.projections import apply_events, records_for, snapshot
from tests.support.runs import START, meta, simulate

pytestmark = pytest.mark.unit


def _by_run(events: list[Event]) -> dict[tuple[str, str], list[Event]]:
    runs: dict[tuple[str, str], list[Event]] = defaultdict(list)
    for event in events:
        runs[(event.meta.tenant_id, event.meta.run_id)].append(event)
    return runs


async def test_each_row_holds_the_runview_fold_of_its_run(store: SqliteProjectionStore) -> None:
    events = simulate(seed=7, runs=40)
    await apply_events(store, [RunStateProjection()], events, batch=7)
    states = RunStates(store)
    runs = _by_run(events)
    assert len(await store.scan(RUNS)) == len(runs)
    for (tenant, run_id), run_events in runs.items():
        expected = RunView.fold(run_id, run_events)
        assert await states.view(tenant, run_id) == expected
        state = await states.get(tenant, run_id)
        assert state is not None
        assert (state.status, state.goal, state.step) == (expected.status, expected.goal, expected.step)
        assert (state.input_tokens, state.output_tokens) == (expected.input_tokens, expected.output_tokens)
        assert state.cost_usd == expected.cost_usd
        assert state.tool_calls == expected.tool_calls
        assert state.events == len(run_events)
        assert state.last_event_id == run_events[-1].meta.event_id
        assert state.pending_tool_call_ids == tuple(c.tool_call_id for c in expected.pending_calls)
        assert state.pending_approval_ids == tuple(sorted(expected.pending_approvals))
        assert state.created_at == run_events[0].meta.occurred_at
        assert state.updated_at == run_events[-1].meta.occurred_at


async def test_the_last_applied_position_is_recorded(store: SqliteProjectionStore) -> None:
    events = simulate(seed=3, runs=5)
    records = records_for(events)
    await apply_events(store, [RunStateProjection()], events, records=records)
    last = {(e.meta.tenant_id, e.meta.run_id): r for e, r in zip(events, records, strict=True)}
    for (tenant, run_id), record in last.items():
        state = await RunStates(store).get(tenant, run_id)
        assert state is not None
        assert (state.last_partition, state.last_offset) == (record.partition, record.offset)


async def test_batch_boundaries_do_not_change_the_rows(tmp_path: Path) -> None:
    events = simulate(seed=11, runs=30)
    rows = []
    for batch in (1, 13, 10_000):
        store = SqliteProjectionStore(tmp_path / f"views-{batch}.db")
        await apply_events(store, [RunStateProjection()], events, batch=batch)
        rows.append(await snapshot(store, [RunStateProjection()]))
        await store.close()
    assert rows[0] == rows[1] == rows[2]


def test_a_view_snapshot_round_trips_with_its_call_index() -> None:
    run = [e for e in simulate(seed=5, runs=1)]
    view = RunView.fold(run[0].meta.run_id, run)
    again = load_view(dump_view(view))
    assert again == view
    for step in again.steps:
        for call in step.calls:
            assert again.call(call.tool_call_id) is call, "the index points at the steps' own calls"


async def test_pending_calls_and_approvals_show_until_resolved(store: SqliteProjectionStore) -> None:
    events: list[Event] = [
        TaskSubmitted(meta=meta("r1", "acme", 0), goal="g", budget=Budget()),
        PlanProposed(
            meta=meta("r1", "acme", 1), step=1, thought="t", model="m", usage=Usage(), based_on_event_id="x"
        ),
        ToolCallRequested(
            meta=meta("r1", "acme", 2), step=1, tool_call_id="c1", tool="sql", arguments_json="{}"
        ),
        ToolCallRequested(
            meta=meta("r1", "acme", 3), step=1, tool_call_id="c2", tool="sql", arguments_json="{}"
        ),
        ApprovalRequested(
            meta=meta("r1", "acme", 4),
            approval_id="a1",
            tool_call_id="c2",
            tool="sql",
            arguments_json="{}",
            arguments_digest="d",
            risk_tier="high",
            reason="writes",
        ),
        BudgetCharged(
            meta=meta("r1", "acme", 5), step=1, usage=Usage(input_tokens=10, cost_usd=0.5), source="model"
        ),
    ]
    await apply_events(store, [RunStateProjection()], events)
    state = await RunStates(store).get("acme", "r1")
    assert state is not None
    assert state.pending_tool_call_ids == ("c1", "c2")
    assert state.pending_approval_ids == ("a1",)
    assert (state.status, state.total_tokens, state.cost_usd) == ("running", 10, 0.5)
    completed = RunCompleted(meta=meta("r1", "acme", 6), answer="done", steps=1, usage=Usage())
    await apply_events(
        store, [RunStateProjection()], [completed], records=records_for([*events, completed])[-1:]
    )
    done = await RunStates(store).get("acme", "r1")
    assert done is not None and (done.status, done.answer, done.events) == ("completed", "done", 7)


async def test_list_is_newest_first_filtered_by_status_and_pages_back(store: SqliteProjectionStore) -> None:
    events: list[Event] = []
    for i in range(6):
        run_id = f"r{i}"
        events.append(TaskSubmitted(meta=meta(run_id, "acme", i * 10), goal=f"g{i}", budget=Budget()))
        if i % 2 == 0:
            events.append(
                RunCompleted(meta=meta(run_id, "acme", i * 10 + 1), answer="a", steps=0, usage=Usage())
            )
    await apply_events(store, [RunStateProjection()], events)
    states = RunStates(store)
    assert [s.run_id for s in await states.list("acme")] == ["r5", "r4", "r3", "r2", "r1", "r0"]
    assert [s.run_id for s in await states.list("acme", limit=2)] == ["r5", "r4"]
    assert [s.run_id for s in await states.list("acme", status="completed")] == ["r4", "r2", "r0"]
    assert [s.run_id for s in await states.list("acme", status="running")] == ["r5", "r3", "r1"]
    page = await states.list("acme", limit=2, before=START + timedelta(seconds=40))
    assert [s.run_id for s in page] == ["r3", "r2"]
    assert await states.list("acme", status="cancelled") == []
    assert await states.get("acme", "r9") is None
    assert await states.view("acme", "r9") is None


async def test_views_folded_by_a_batch_that_never_committed_are_not_reused(tmp_path: Path) -> None:
    events = simulate(seed=17, runs=8)
    records = records_for(events)
    projection = RunStateProjection()
    store = SqliteProjectionStore(tmp_path / "views.db")
    await apply_events(store, [projection], events[:60], records=records[:60], batch=20)
    doomed = store.transaction()
    await projection.apply_batch(list(zip(events[60:90], records[60:90], strict=True)), doomed)
    # The batch is dropped (its commit failed, say); the same events come again.
    await apply_events(store, [projection], events[60:], records=records[60:], batch=20)
    reference = SqliteProjectionStore(tmp_path / "reference.db")
    await apply_events(reference, [RunStateProjection()], events, records=records, batch=20)
    assert await snapshot(store, [projection]) == await snapshot(reference, [projection])
    for (tenant, run_id), run_events in _by_run(events).items():
        state = await RunStates(store).get(tenant, run_id)
        assert state is not None and state.events == len(run_events)
    await store.close()
    await reference.close()


async def test_a_busy_run_is_not_parsed_back_at_every_batch(
    store: SqliteProjectionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import projections.run_state as run_state

    loads = 0
    real = run_state.load_view

    def counting(text: str) -> RunView:
        nonlocal loads
        loads += 1
        return real(text)

    monkeypatch.setattr(run_state, "load_view", counting)
    events = simulate(seed=19, runs=1)
    await apply_events(store, [RunStateProjection()], events, batch=2)
    assert loads == 0
    fresh = RunStateProjection()  # another process: nothing cached
    more = RunCompleted(
        meta=meta(events[0].meta.run_id, events[0].meta.tenant_id, 999), answer="x", steps=1, usage=Usage()
    )
    await apply_events(store, [fresh], [more], records=records_for([*events, more])[-1:])
    assert loads == 1
