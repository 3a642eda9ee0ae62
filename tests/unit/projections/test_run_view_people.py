"""How a run view folds approvals, questions and cancels: which decision settles a request."""

from __future__ import annotations

from datetime import timedelta

import pytest

from projections.approvals import ApprovalInbox, ApprovalsProjection
from projections.run_state import dump_view, load_view
from projections.run_view import RunView
from projections.stores.sqlite import SqliteProjectionStore
from streams.events import (
    ApprovalDecided,
    ApprovalDecisionIgnored,
    ApprovalRequested,
    Budget,
    Event,
    HumanAnswered,
    PlanProposed,
    RunCancelled,
    RunResumed,
    RunSuspended,
    TaskSubmitted,
    ToolCallRequested,
    Usage,
)
from tests.support.projections import apply_events
from tests.support.runs import START, meta

pytestmark = pytest.mark.unit


def start() -> list[Event]:
    return [
        TaskSubmitted(meta=meta("r1", "acme", 0), goal="g", budget=Budget()),
        PlanProposed(
            meta=meta("r1", "acme", 1), step=1, thought="", model="m", usage=Usage(), based_on_event_id="x"
        ),
        ToolCallRequested(
            meta=meta("r1", "acme", 1),
            step=1,
            tool_call_id="c1",
            tool="send_email",
            arguments_json='{"to":"a"}',
        ),
        ApprovalRequested(
            meta=meta("r1", "acme", 2),
            approval_id="a1",
            tool_call_id="c1",
            tool="send_email",
            arguments_json='{"to":"a"}',
            arguments_digest="d1",
            risk_tier="high",
            reason="policy",
            expires_at=START + timedelta(seconds=60),
        ),
        RunSuspended(meta=meta("r1", "acme", 2), reason="approval", approval_id="a1", tool_call_id="c1"),
    ]


def decision(
    second: float,
    decision: str = "approved",
    *,
    approval_id: str = "a1",
    call: str = "c1",
    digest: str = "d1",
) -> ApprovalDecided:
    return ApprovalDecided(
        meta=meta("r1", "acme", second),
        approval_id=approval_id,
        tool_call_id=call,
        arguments_digest=digest,
        decision=decision,
        reviewer="alice",
    )


def test_a_pending_request_suspends_the_run() -> None:
    view = RunView.fold("r1", start())
    assert view.status == "suspended" and view.waits == 1
    assert view.pending_approvals == {"a1": "c1"}
    assert view.call("c1") is not None and view.call("c1").status == "awaiting_approval"  # type: ignore[union-attr]
    assert view.approvals["a1"].pending


def test_the_first_matching_decision_settles_the_request() -> None:
    first = decision(10)
    view = RunView.fold("r1", [*start(), first, decision(11, "denied")])
    approval = view.approvals["a1"]
    assert (approval.status, approval.decided_by_event_id, approval.reviewer) == (
        "approved",
        first.meta.event_id,
        "alice",
    )
    assert list(view.ignored_decisions.values()) == ["already_approved"]
    assert view.waits == 0


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (decision(10, approval_id="a9"), "unknown_approval"),
        (decision(10, call="c2"), "tool_call_mismatch"),
        (decision(10, digest="d2"), "digest_mismatch"),
        (decision(10, "maybe"), "unknown_decision"),
        (decision(61), "expired"),
    ],
)
def test_decisions_that_settle_nothing_are_recorded_with_the_reason(
    bad: ApprovalDecided, reason: str
) -> None:
    view = RunView.fold("r1", [*start(), bad])
    assert view.ignored_decisions == {bad.meta.event_id: reason}
    assert view.approvals["a1"].pending and view.status == "suspended"


def test_a_late_denial_or_expiry_still_settles() -> None:
    assert RunView.fold("r1", [*start(), decision(61, "denied")]).approvals["a1"].status == "denied"
    assert RunView.fold("r1", [*start(), decision(61, "expired")]).approvals["a1"].status == "expired"


def test_questions_open_on_suspension_and_close_on_the_answer() -> None:
    events: list[Event] = [
        *start()[:2],
        ToolCallRequested(
            meta=meta("r1", "acme", 1),
            step=1,
            tool_call_id="q1",
            tool="ask_human",
            arguments_json='{"question":"Why?"}',
        ),
        RunSuspended(meta=meta("r1", "acme", 2), reason="ask_human", tool_call_id="q1"),
    ]
    view = RunView.fold("r1", events)
    assert view.questions == {"q1": "Why?"} and view.status == "suspended"
    assert view.call("q1").status == "awaiting_human"  # type: ignore[union-attr]
    restored = load_view(dump_view(view))
    assert restored.questions == view.questions and restored.status == "suspended"
    answered = [
        *events,
        HumanAnswered(meta=meta("r1", "acme", 3), tool_call_id="q1", answer="because", answered_by="bo"),
    ]
    assert RunView.fold("r1", answered).waits == 0
    assert (
        RunView.fold("r1", [*answered, RunResumed(meta=meta("r1", "acme", 4), reason="x")]).status
        == "running"
    )


def test_cancel_is_final_and_keeps_who_asked() -> None:
    view = RunView.fold(
        "r1",
        [
            *start(),
            RunCancelled(meta=meta("r1", "acme", 3), reason="oops", requested_by="alice"),
            RunResumed(meta=meta("r1", "acme", 4), reason="late"),
        ],
    )
    assert (view.status, view.error, view.cancelled_by) == ("cancelled", "oops", "alice")


def test_approval_views_survive_the_run_state_snapshot() -> None:
    view = RunView.fold("r1", [*start(), decision(10)])
    restored = load_view(dump_view(view))
    assert restored.approvals == view.approvals


async def test_the_inbox_keeps_a_request_pending_until_a_matching_decision(
    store: SqliteProjectionStore,
) -> None:
    ignored = ApprovalDecisionIgnored(
        meta=meta("r1", "acme", 12), approval_id="a1", tool_call_id="c1", decision_event_id="e", reason="x"
    )
    events: list[Event] = [
        *start(),
        decision(10, digest="d2"),
        decision(11, call="c9"),
        decision(61),
        ignored,
    ]
    await apply_events(store, [ApprovalsProjection()], events)
    inbox = ApprovalInbox(store)
    assert [a.approval_id for a in await inbox.pending("acme")] == ["a1"]
    await apply_events(store, [ApprovalsProjection()], [decision(20, "denied")])
    approval = await inbox.get("acme", "a1")
    assert approval is not None and approval.status == "denied"
