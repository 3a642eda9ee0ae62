"""The cost ledger: exact totals per tenant and per tool, whatever the interleaving."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from projections.cost_ledger import CostLedger, CostLedgerProjection, to_nanos
from projections.stores.sqlite import SqliteProjectionStore
from streams.events import BudgetCharged, Event, ObservationRecorded, Usage
from tests.support.projections import Expected, apply_events, records_for, snapshot
from tests.support.runs import meta, simulate

pytestmark = pytest.mark.unit


async def test_totals_are_the_exact_sums_of_the_charges(store: SqliteProjectionStore) -> None:
    events = simulate(seed=12, runs=80)
    await apply_events(store, [CostLedgerProjection()], events, batch=23)
    expected = Expected.of(events)
    ledger = CostLedger(store)
    for tenant in expected.events_by_tenant:
        cost = await ledger.summary(tenant)
        assert cost.cost_nano_usd == expected.nanos_by_tenant[tenant]
        assert cost.total_tokens == expected.tokens_by_tenant[tenant]
        assert cost.charges == expected.charges_by_tenant[tenant]
        observed = [e for e in events if isinstance(e, ObservationRecorded) and e.meta.tenant_id == tenant]
        assert sum(t.calls for t in cost.tools.values()) == len(observed)
        assert sum(t.failures for t in cost.tools.values()) == sum(1 for e in observed if not e.ok)
        assert cost.tool_calls == sum(
            e.tool_calls for e in events if isinstance(e, BudgetCharged) and e.meta.tenant_id == tenant
        )


async def test_a_tenant_without_charges_has_a_zero_ledger(store: SqliteProjectionStore) -> None:
    await store.register(CostLedgerProjection().schema)
    cost = await CostLedger(store).summary("nobody")
    assert (cost.cost_usd, cost.total_tokens, cost.charges, dict(cost.tools)) == (0.0, 0, 0, {})


async def test_money_adds_up_in_nano_dollars(store: SqliteProjectionStore) -> None:
    charges = [0.1, 0.2, 0.3, 1e-7, 2.5e-9]
    events: list[Event] = [
        BudgetCharged(meta=meta(f"r{i}", "acme", i), step=1, usage=Usage(cost_usd=usd), source="model")
        for i, usd in enumerate(charges)
    ]
    await apply_events(store, [CostLedgerProjection()], events)
    cost = await CostLedger(store).summary("acme")
    assert cost.cost_nano_usd == 600_000_102 == sum(to_nanos(c) for c in charges)
    assert cost.cost_usd == pytest.approx(0.600000102)


async def test_partitions_applied_in_any_interleaving_give_the_same_rows(tmp_path: Path) -> None:
    events = simulate(seed=13, runs=60)
    records = records_for(events)
    pairs = list(zip(events, records, strict=True))
    snapshots = []
    for attempt in range(3):
        # Keep each partition's order, interleave partitions differently each time.
        lanes = {
            p: [pair for pair in pairs if pair[1].partition == p] for p in {r.partition for r in records}
        }
        rng = random.Random(attempt)
        shuffled = []
        while any(lanes.values()):
            lane = rng.choice([p for p, rest in lanes.items() if rest])
            shuffled.append(lanes[lane].pop(0))
        store = SqliteProjectionStore(tmp_path / f"views-{attempt}.db")
        await apply_events(
            store,
            [CostLedgerProjection()],
            [e for e, _ in shuffled],
            records=[r for _, r in shuffled],
            batch=rng.randint(1, 40),
        )
        snapshots.append(await snapshot(store, [CostLedgerProjection()]))
        await store.close()
    assert snapshots[0] == snapshots[1] == snapshots[2]
