"""The episodic view: every event of every run, as JSON, found by run, type or time.

Rows are insert-only and keyed by log position, so the view is the log itself made
queryable per tenant, without reading a whole partition.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from projections.projector import Projection
from projections.stores.base import Index, ProjectionStore, Row, Table, ViewTransaction
from streams.events import EVENT_TYPES, Event
from streams.log import LogRecord

EVENTS = Table(
    "episodic_events",
    columns={
        "tenant_id": "text",
        "run_id": "text",
        "log_offset": "int",
        "log_partition": "int",
        "event_id": "text",
        "type": "text",
        "occurred_at": "time",
        "producer": "text",
        "causation_id": "text",
        "event_json": "text",
    },
    key=("tenant_id", "run_id", "log_offset", "log_partition"),
    indexes=(
        Index("by_type", equal=("type",), order=("occurred_at",)),
        Index("by_time", order=("occurred_at",)),
    ),
)


@dataclass(frozen=True)
class EpisodicEvent:
    """One event of a run, where it is in the log, and its fields as JSON."""

    tenant_id: str
    run_id: str
    partition: int
    offset: int
    event_id: str
    type: str
    occurred_at: datetime
    producer: str
    causation_id: str | None
    event_json: str

    @property
    def data(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.event_json)
        return parsed

    def event(self) -> Event:
        """The typed event again, as the codec decoded it."""
        return EVENT_TYPES[self.type].model_validate_json(self.event_json)

    @classmethod
    def from_row(cls, row: Row) -> EpisodicEvent:
        return cls(
            tenant_id=row["tenant_id"],
            run_id=row["run_id"],
            partition=row["log_partition"],
            offset=row["log_offset"],
            event_id=row["event_id"],
            type=row["type"],
            occurred_at=row["occurred_at"],
            producer=row["producer"],
            causation_id=row["causation_id"],
            event_json=row["event_json"],
        )


class EpisodicProjection(Projection):
    """Keeps every event, keyed by tenant, run and log position."""

    name = "episodic"
    consumes = frozenset(EVENT_TYPES)
    tables = (EVENTS,)

    async def apply(self, event: Event, record: LogRecord, txn: ViewTransaction) -> None:
        meta = event.meta
        txn.put(
            EVENTS,
            {
                "tenant_id": meta.tenant_id,
                "run_id": meta.run_id,
                "log_offset": record.offset,
                "log_partition": record.partition,
                "event_id": meta.event_id,
                "type": event.type_name,
                "occurred_at": meta.occurred_at,
                "producer": meta.producer,
                "causation_id": meta.causation_id,
                "event_json": event.model_dump_json(),
            },
        )


class Episodes:
    """Queries over the episodic view. Every one is scoped to a tenant and bounded."""

    def __init__(self, store: ProjectionStore) -> None:
        self.store = store

    async def by_run(
        self, tenant_id: str, run_id: str, *, after_offset: int | None = None, limit: int = 500
    ) -> Sequence[EpisodicEvent]:
        """A run's events in log order; `after_offset` pages on from the last one seen."""
        rows = await self.store.select(
            EVENTS,
            tenant_id,
            equal={"run_id": run_id},
            start=None if after_offset is None else after_offset + 1,
            limit=limit,
        )
        return [EpisodicEvent.from_row(r) for r in rows]

    async def by_type(
        self,
        tenant_id: str,
        type_name: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        newest_first: bool = True,
    ) -> Sequence[EpisodicEvent]:
        """The tenant's events of one type, in [since, until)."""
        rows = await self.store.select(
            EVENTS,
            tenant_id,
            index="by_type",
            equal={"type": type_name},
            start=since,
            stop=until,
            descending=newest_first,
            limit=limit,
        )
        return [EpisodicEvent.from_row(r) for r in rows]

    async def between(
        self,
        tenant_id: str,
        since: datetime | None = None,
        until: datetime | None = None,
        *,
        limit: int = 100,
        newest_first: bool = False,
    ) -> Sequence[EpisodicEvent]:
        """The tenant's events of every run that happened in [since, until)."""
        rows = await self.store.select(
            EVENTS,
            tenant_id,
            index="by_time",
            start=since,
            stop=until,
            descending=newest_first,
            limit=limit,
        )
        return [EpisodicEvent.from_row(r) for r in rows]
