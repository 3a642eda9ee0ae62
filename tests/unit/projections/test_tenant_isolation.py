"""Tenant isolation: no query, with any argument, returns another tenant's rows.

Two tenants share run ids, approval ids and tool names. Every query of tenant `acme`,
with every argument value either tenant's data contains, must answer exactly what it
answers on a store that never saw the other tenant.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

import pytest

from projections.approvals import ApprovalInbox
from projections.builtin import builtin_projections
from projections.cost_ledger import CostLedger
from projections.episodic import Episodes
from projections.run_state import RunStates
from projections.stores.base import ProjectionStore
from streams.events import EVENT_TYPES, ApprovalDecided, ApprovalRequested, Event
from tests.support.projections import apply_events
from tests.support.runs import meta, simulate
from tests.support.stores import StoreBackend

pytestmark = pytest.mark.unit

STATUSES = [
    "running",
    "suspended",
    "completed",
    "failed",
    "aborted",
    "cancelled",
    "pending",
    "approved",
    "denied",
    "expired",
]
HOSTILE_TENANTS = [
    "evil%",
    "%",
    "_",
    "acme%",
    "ACME",
    " acme",
    "acme ",
    "' OR '1'='1",
    "acme' --",
    "*",
    "acme\x00",
]


def _shared_approval(tenant: str, decision: str | None) -> list[Event]:
    events: list[Event] = [
        ApprovalRequested(
            meta=meta("run-00000", tenant, 1000),
            approval_id="shared-approval",
            tool_call_id="call-x",
            tool="sql",
            arguments_json=f'{{"tenant": "{tenant}"}}',
            arguments_digest=f"digest-{tenant}",
            risk_tier="high",
            reason=f"asked by {tenant}",
        )
    ]
    if decision:
        events.append(
            ApprovalDecided(
                meta=meta("run-00000", tenant, 1001),
                approval_id="shared-approval",
                tool_call_id="call-x",
                arguments_digest=f"digest-{tenant}",
                decision=decision,
                reviewer=tenant,
            )
        )
    return events


ACME = simulate(seed=21, runs=25, tenants=("acme",)) + _shared_approval("acme", None)
EVIL = (
    simulate(seed=22, runs=25, tenants=("evil",))
    + simulate(seed=23, runs=5, tenants=("evil",), run_prefix="evil-run")
    + _shared_approval("evil", "approved")
)


@pytest.fixture
async def stores(store_backend: StoreBackend) -> AsyncIterator[tuple[ProjectionStore, ProjectionStore]]:
    mixed = store_backend.open("mixed")
    alone = store_backend.open("alone")
    mixed_events = [e for pair in zip(ACME, EVIL, strict=False) for e in pair]
    mixed_events += ACME[len(EVIL) :] + EVIL[len(ACME) :]
    await apply_events(mixed, builtin_projections(), mixed_events, batch=31)
    await apply_events(alone, builtin_projections(), ACME, batch=31)
    yield mixed, alone
    await mixed.close()
    await alone.close()


def _plain(result: Any) -> Any:
    """A result as plain data, without log offsets (the two stores' logs differ there)."""
    if isinstance(result, list | tuple):
        return [_plain(r) for r in result]
    if hasattr(result, "__dataclass_fields__"):
        return {k: v for k, v in asdict(result).items() if k not in ("offset", "last_offset")}
    return result


def _queries(tenant: str) -> list[tuple[str, Any]]:
    """(label, coroutine factory) for every query with every argument either tenant's data has."""
    run_ids = sorted({e.meta.run_id for e in ACME + EVIL})
    approval_ids = sorted(
        {e.approval_id for e in ACME + EVIL if isinstance(e, ApprovalRequested | ApprovalDecided)}
    )
    times = sorted({e.meta.occurred_at for e in ACME + EVIL})
    out: list[tuple[str, Any]] = []
    for run_id in run_ids:
        out.append((f"run get {run_id}", lambda s, r=run_id: RunStates(s).get(tenant, r)))
        out.append((f"run view {run_id}", lambda s, r=run_id: RunStates(s).view(tenant, r)))
        out.append((f"episodes {run_id}", lambda s, r=run_id: Episodes(s).by_run(tenant, r, limit=10_000)))
    for status in [None, *STATUSES]:
        out.append((f"runs {status}", lambda s, st=status: RunStates(s).list(tenant, st, limit=10_000)))
        out.append(
            (f"approvals {status}", lambda s, st=status: ApprovalInbox(s).list(tenant, st, limit=10_000))
        )
    for approval_id in approval_ids:
        out.append((f"approval {approval_id}", lambda s, a=approval_id: ApprovalInbox(s).get(tenant, a)))
    for type_name in EVENT_TYPES:
        out.append((f"type {type_name}", lambda s, t=type_name: Episodes(s).by_type(tenant, t, limit=10_000)))
    out.append(("between", lambda s: Episodes(s).between(tenant, times[0], times[-1], limit=10_000)))
    out.append(("pending", lambda s: ApprovalInbox(s).pending(tenant, limit=10_000)))
    out.append(("cost", lambda s: CostLedger(s).summary(tenant)))
    out.append(("tools", lambda s: CostLedger(s).tools(tenant)))
    return out


async def test_every_query_of_a_tenant_answers_as_if_it_were_alone(
    stores: tuple[ProjectionStore, ProjectionStore],
) -> None:
    mixed, alone = stores
    checked = 0
    for label, query in _queries("acme"):
        assert _plain(await query(mixed)) == _plain(await query(alone)), label
        checked += 1
    assert checked > 100
    shared = await ApprovalInbox(mixed).get("acme", "shared-approval")
    assert shared is not None and shared.pending and shared.reason == "asked by acme"
    assert await RunStates(mixed).get("acme", "evil-run-00000") is None
    assert (await CostLedger(mixed).summary("evil")).cost_nano_usd != (
        await CostLedger(mixed).summary("acme")
    ).cost_nano_usd


@pytest.mark.parametrize("tenant", HOSTILE_TENANTS)
async def test_lookalike_and_wildcard_tenants_see_nothing(
    stores: tuple[ProjectionStore, ProjectionStore], tenant: str
) -> None:
    mixed, _ = stores
    for label, query in _queries(tenant):
        result = _plain(await query(mixed))
        if label == "cost":
            assert result["charges"] == 0 and result["tools"] == {}, label
        else:
            assert result in (None, []), label


async def test_a_query_without_a_tenant_is_refused(
    stores: tuple[ProjectionStore, ProjectionStore],
) -> None:
    mixed, _ = stores
    with pytest.raises(ValueError, match="tenant"):
        await RunStates(mixed).list("")
    with pytest.raises(ValueError, match="tenant"):
        await Episodes(mixed).by_run("", "run-00000")
    with pytest.raises(ValueError, match="tenant"):
        await CostLedger(mixed).summary("")
