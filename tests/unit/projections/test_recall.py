"""Episodic recall: similar earlier runs and failures of the same tools, per tenant, bounded."""

from __future__ import annotations

import pytest

from projections.recall import TOOL_FAILURES, EpisodicRecall, ToolFailuresProjection
from projections.run_state import RunStateProjection
from projections.run_view import RunView
from projections.stores.sqlite import SqliteProjectionStore
from streams.events import (
    Budget,
    Event,
    ObservationRecorded,
    RunCompleted,
    RunFailed,
    TaskSubmitted,
    ToolCallRejected,
    Usage,
)
from tests.support.projections import apply_events
from tests.support.runs import meta, simulate

pytestmark = pytest.mark.unit


def task(run_id: str, tenant: str, goal: str, second: float = 0) -> TaskSubmitted:
    return TaskSubmitted(
        meta=meta(run_id, tenant, second), goal=goal, budget=Budget(), tools=[], submitted_by="test"
    )


def failure(run_id: str, tenant: str, tool: str, error: str, second: float) -> ObservationRecorded:
    return ObservationRecorded(
        meta=meta(run_id, tenant, second),
        step=1,
        tool_call_id="call_1_0",
        tool=tool,
        ok=False,
        error=error,
        truncated=False,
        duration_ms=3,
    )


def history() -> list[Event]:
    return [
        task("r-report", "acme", "write the weekly sales report for the north region"),
        failure("r-report", "acme", "sql", "permission denied for table sales_north", 1),
        RunFailed(meta=meta("r-report", "acme", 2), error="could not read sales_north", steps=1),
        task("r-poem", "acme", "compose a poem about autumn leaves", 3),
        RunCompleted(meta=meta("r-poem", "acme", 4), answer="Leaves fall...", steps=1, usage=Usage()),
        task("r-ok", "acme", "weekly sales report for the south region", 5),
        ObservationRecorded(
            meta=meta("r-ok", "acme", 6),
            step=1,
            tool_call_id="call_1_0",
            tool="sql",
            ok=True,
            data_json="[]",
            truncated=False,
            duration_ms=2,
        ),
        RunCompleted(meta=meta("r-ok", "acme", 7), answer="South sales up 4%.", steps=1, usage=Usage()),
        ToolCallRejected(
            meta=meta("r-ok", "acme", 8),
            step=2,
            tool_call_id="call_2_0",
            tool="http_fetch",
            reason="policy",
            errors=["host not on the allowlist: evil.example"],
        ),
        task("g-report", "globex", "write the weekly sales report for the north region", 9),
        failure("g-report", "globex", "sql", "globex secret: connection refused", 10),
        RunFailed(meta=meta("g-report", "globex", 11), error="globex private error", steps=1),
    ]


HISTORY = history()


def planning(run_id: str, tenant: str, goal: str) -> RunView:
    view = RunView(run_id)
    view.apply(task(run_id, tenant, goal, 20))
    return view


@pytest.fixture
async def recall(store: SqliteProjectionStore) -> EpisodicRecall:
    await apply_events(store, [RunStateProjection(), ToolFailuresProjection()], HISTORY, batch=4)
    return EpisodicRecall(store)


async def test_similar_runs_and_failures_of_the_same_tools_are_recalled_with_citations(
    recall: EpisodicRecall,
) -> None:
    view = planning("r-new", "acme", "write the weekly sales report for the east region")
    notes = await recall.recall(view, ["sql", "calculator"])
    runs = [n.run_id for n in notes]
    assert runs[:2] == ["r-report", "r-ok"], "the closest goal first; dissimilar goals are left out"
    assert "r-poem" not in runs
    assert "could not read sales_north" in notes[0].text and notes[0].text.startswith("failed")
    sql_failure = next(n for n in notes if "permission denied" in n.text)
    assert sql_failure.run_id == "r-report"
    assert sql_failure.event_id == HISTORY[1].meta.event_id
    assert notes[0].event_id == HISTORY[2].meta.event_id, "a run is cited by its last event"
    assert all(n.event_id for n in notes), "every note cites the event it came from"
    assert all(n.cited().startswith(f"[run {n.run_id}, event {n.event_id}]") for n in notes)
    assert not any("http_fetch" in n.text for n in notes), "only tools this run may use"


async def test_another_tenant_is_never_recalled(recall: EpisodicRecall) -> None:
    for tenant in ("acme", "initech"):
        view = planning("x-new", tenant, "write the weekly sales report for the north region")
        notes = await recall.recall(view, ["sql", "http_fetch"])
        assert not any("globex" in n.text or n.run_id.startswith("g-") for n in notes)
    globex = await recall.recall(planning("g-new", "globex", "weekly sales report north"), ["sql"])
    assert {n.run_id for n in globex} == {"g-report"}


async def test_the_run_itself_and_empty_inputs_give_nothing(recall: EpisodicRecall) -> None:
    own = planning("r-report", "acme", "write the weekly sales report for the north region")
    assert all(n.run_id != "r-report" for n in await recall.recall(own, ["sql"]))
    assert await recall.recall(planning("r-x", "acme", "zz"), []) == []
    assert await recall.recall(RunView("no-tenant"), ["sql"]) == []


async def test_notes_are_bounded_in_number_and_length(store: SqliteProjectionStore) -> None:
    events: list[Event] = []
    for i in range(30):
        run = f"r-{i:02d}"
        events.append(task(run, "acme", f"summarize the quarterly numbers batch {i}", i))
        events.append(failure(run, "acme", "sql", "timeout " + "x" * 2_000, i + 0.5))
        events.append(RunFailed(meta=meta(run, "acme", i + 0.7), error="e" * 5_000, steps=1))
    await apply_events(store, [RunStateProjection(), ToolFailuresProjection()], events, batch=25)
    recall = EpisodicRecall(store, limit=4, chars=120)
    notes = await recall.recall(planning("r-new", "acme", "summarize the quarterly numbers"), ["sql"])
    assert len(notes) == 4
    assert all(len(n.text) <= 120 for n in notes)
    failures = [n for n in notes if n.text.startswith("sql")]
    assert failures and failures[0].run_id == "r-29", "newest failures first"


async def test_failures_view_keeps_errors_and_rejections_only(store: SqliteProjectionStore) -> None:
    events = simulate(seed=3, runs=40)
    await apply_events(store, [ToolFailuresProjection()], events, batch=30)
    rows = await store.scan(TOOL_FAILURES)
    expected = {
        e.meta.event_id
        for e in events
        if (isinstance(e, ObservationRecorded) and not e.ok) or isinstance(e, ToolCallRejected)
    }
    assert expected and {r["event_id"] for r in rows} == expected
