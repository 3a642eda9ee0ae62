"""Helpers for projection tests: apply events without a log, and snapshot every view."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from projections.cost_ledger import to_nanos
from projections.projector import Projection
from projections.stores.base import ProjectionStore
from streams.events import BudgetCharged, Event
from streams.log import LogRecord, TopicPartition
from streams.partitioning import partition_for

TOPIC = "test.events"
PARTITIONS = 3


def records_for(
    events: Sequence[Event], *, topic: str = TOPIC, partitions: int = PARTITIONS
) -> list[LogRecord]:
    """The log positions the events would take, keyed by run id as the log does."""
    next_offset: Counter[int] = Counter()
    out = []
    for event in events:
        key = event.meta.run_id.encode()
        partition = partition_for(key, partitions)
        out.append(LogRecord(topic, partition, next_offset[partition], key, b"", (), 0))
        next_offset[partition] += 1
    return out


async def apply_events(
    store: ProjectionStore,
    projections: Sequence[Projection],
    events: Sequence[Event],
    *,
    batch: int = 50,
    records: Sequence[LogRecord] | None = None,
) -> None:
    """Fold events into the store through each projection, committing every `batch` events."""
    for projection in projections:
        await store.register(projection.schema)
    placed = list(records) if records is not None else records_for(events)
    for start in range(0, len(events), batch):
        chunk = list(zip(events[start : start + batch], placed[start : start + batch], strict=True))
        txn = store.transaction()
        for projection in projections:
            mine = [(e, r) for e, r in chunk if e.type_name in projection.consumes]
            if mine:
                await projection.apply_batch(mine, txn)
            old = await store.offsets(projection.name)
            new = dict(old)
            for _, record in chunk:
                new[TopicPartition(record.topic, record.partition)] = record.offset + 1
            txn.advance(projection.name, old, new)
        await store.commit(txn)


async def snapshot(
    store: ProjectionStore, projections: Sequence[Projection]
) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table of the projections, in key order."""
    return {table.name: await store.scan(table) for p in projections for table in p.tables}


@dataclass
class Expected:
    """What the views must say, computed straight from the events."""

    events_by_tenant: Counter[str] = field(default_factory=Counter)
    events_by_run: Counter[tuple[str, str]] = field(default_factory=Counter)
    nanos_by_tenant: Counter[str] = field(default_factory=Counter)
    tokens_by_tenant: Counter[str] = field(default_factory=Counter)
    charges_by_tenant: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(cls, events: Sequence[Event]) -> Expected:
        expected = cls()
        for event in events:
            tenant = event.meta.tenant_id
            expected.events_by_tenant[tenant] += 1
            expected.events_by_run[(tenant, event.meta.run_id)] += 1
            if isinstance(event, BudgetCharged):
                expected.nanos_by_tenant[tenant] += to_nanos(event.usage.cost_usd)
                expected.tokens_by_tenant[tenant] += event.usage.input_tokens + event.usage.output_tokens
                expected.charges_by_tenant[tenant] += 1
        return expected
