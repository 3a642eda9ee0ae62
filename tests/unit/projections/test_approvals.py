"""The approvals inbox: pending until decided, the first decision final, per tenant."""

from __future__ import annotations

import pytest

from projections.approvals import ApprovalInbox, ApprovalsProjection
from projections.stores.sqlite import SqliteProjectionStore
from streams.events import ApprovalDecided, ApprovalRequested, Event
from tests.support.projections import apply_events
from tests.support.runs import meta, simulate

pytestmark = pytest.mark.unit


def requested(approval_id: str, second: float, tenant: str = "acme", run_id: str = "r1") -> ApprovalRequested:
    return ApprovalRequested(
        meta=meta(run_id, tenant, second),
        approval_id=approval_id,
        tool_call_id=f"call-{approval_id}",
        tool="sql",
        arguments_json='{"q": 1}',
        arguments_digest="digest-1",
        risk_tier="high",
        reason="writes",
    )


def decided(
    approval_id: str, decision: str, second: float, tenant: str = "acme", run_id: str = "r1"
) -> ApprovalDecided:
    return ApprovalDecided(
        meta=meta(run_id, tenant, second),
        approval_id=approval_id,
        tool_call_id=f"call-{approval_id}",
        arguments_digest="digest-1",
        decision=decision,
        reviewer="alice",
        comment="fine",
    )


async def test_a_request_is_pending_until_decided(store: SqliteProjectionStore) -> None:
    events: list[Event] = [
        requested("a1", 1),
        requested("a2", 2),
        requested("a3", 3),
        decided("a2", "approved", 4),
    ]
    await apply_events(store, [ApprovalsProjection()], events)
    inbox = ApprovalInbox(store)
    assert [a.approval_id for a in await inbox.pending("acme")] == ["a1", "a3"]
    assert [a.approval_id for a in await inbox.pending("acme", limit=1)] == ["a1"]
    a2 = await inbox.get("acme", "a2")
    assert a2 is not None and not a2.pending
    assert (a2.status, a2.reviewer, a2.decided_digest, a2.tool) == ("approved", "alice", "digest-1", "sql")
    assert [a.approval_id for a in await inbox.list("acme", "approved")] == ["a2"]
    assert [a.approval_id for a in await inbox.list("acme", newest_first=True)] == ["a3", "a2", "a1"]
    assert await inbox.get("acme", "a9") is None


async def test_the_first_decision_is_final(store: SqliteProjectionStore) -> None:
    events: list[Event] = [requested("a1", 1), decided("a1", "expired", 2), decided("a1", "approved", 3)]
    await apply_events(store, [ApprovalsProjection()], events, batch=1)
    approval = await ApprovalInbox(store).get("acme", "a1")
    assert approval is not None and approval.status == "expired"


async def test_a_decision_without_a_request_is_recorded_as_decided(store: SqliteProjectionStore) -> None:
    await apply_events(store, [ApprovalsProjection()], [decided("a1", "denied", 2)])
    approval = await ApprovalInbox(store).get("acme", "a1")
    assert approval is not None
    assert (approval.status, approval.tool, approval.run_id) == ("denied", None, "r1")
    assert await ApprovalInbox(store).pending("acme") == []


async def test_pending_matches_requests_without_decisions_in_a_simulation(
    store: SqliteProjectionStore,
) -> None:
    events = simulate(seed=9, runs=60)
    await apply_events(store, [ApprovalsProjection()], events, batch=17)
    inbox = ApprovalInbox(store)
    for tenant in {e.meta.tenant_id for e in events}:
        asked = {
            e.approval_id for e in events if isinstance(e, ApprovalRequested) and e.meta.tenant_id == tenant
        }
        answered = {
            e.approval_id for e in events if isinstance(e, ApprovalDecided) and e.meta.tenant_id == tenant
        }
        assert {a.approval_id for a in await inbox.pending(tenant, limit=10_000)} == asked - answered
        assert len(await inbox.list(tenant, limit=10_000)) == len(asked)
