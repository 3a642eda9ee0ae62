"""Building event envelopes (`EventMeta`): ids, causation and correlation."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from streams.events import EventMeta

_DERIVED = uuid.UUID("6f1c7a52-8d7e-4c3b-9a57-2f1d0c0b7a11")


def now() -> datetime:
    """The current time, UTC, at the millisecond precision events keep."""
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def new_run_id() -> str:
    return str(uuid.uuid4())


def root_meta(run_id: str, tenant_id: str, producer: str, *, trace_id: str | None = None) -> EventMeta:
    """Meta for an event that starts a causal chain, such as a submitted task."""
    return EventMeta(
        event_id=str(uuid.uuid4()),
        run_id=run_id,
        tenant_id=tenant_id,
        causation_id=None,
        correlation_id=run_id,
        trace_id=trace_id,
        occurred_at=now(),
        producer=producer,
    )


def derived_event_id(cause_event_id: str, producer: str, index: int) -> str:
    """A deterministic id for the `index`-th event `producer` emits in reaction to a cause.

    Reprocessing the same input yields the same ids, which makes any duplicate visible.
    """
    return str(uuid.uuid5(_DERIVED, f"{cause_event_id}/{producer}/{index}"))


def caused_by(cause: EventMeta, producer: str, index: int, *, run_id: str | None = None) -> EventMeta:
    """Meta for an event caused by another: same tenant and correlation, new id."""
    return EventMeta(
        event_id=derived_event_id(cause.event_id, producer, index),
        run_id=run_id or cause.run_id,
        tenant_id=cause.tenant_id,
        causation_id=cause.event_id,
        correlation_id=cause.correlation_id,
        trace_id=cause.trace_id,
        occurred_at=now(),
        producer=producer,
    )
