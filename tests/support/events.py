"""Building example events for tests."""

from __future__ import annotations

from typing import Any

from streams.catalogue import catalogue
from streams.envelope import root_meta
from streams.events import EVENT_TYPES, AgentMessage, Event


def message(run_id: str, content: str, tenant: str = "acme") -> AgentMessage:
    return AgentMessage(
        meta=root_meta(run_id, tenant, "test"), from_agent="tester", to_agent="echo", content=content
    )


def _sample(avro_type: Any, seed: int) -> Any:
    """A non-default value of an Avro type, so round trips exercise every field."""
    if isinstance(avro_type, list):
        return _sample(next(b for b in avro_type if b != "null"), seed)
    if isinstance(avro_type, dict):
        if avro_type.get("logicalType") == "timestamp-millis":
            from datetime import UTC, datetime

            return datetime(2026, 1, 2, 3, 4, 5, (seed % 1000) * 1000, tzinfo=UTC)
        kind = avro_type["type"]
        if kind == "record":
            return {f["name"]: _sample(f["type"], seed + i) for i, f in enumerate(avro_type["fields"])}
        if kind == "array":
            return [_sample(avro_type["items"], seed), _sample(avro_type["items"], seed + 1)]
        if kind == "map":
            return {"k": _sample(avro_type["values"], seed)}
        return _sample(kind, seed)
    return {
        "string": f"s{seed}-ünïcode",
        "int": seed + 7,
        "long": 2**40 + seed,
        "double": seed + 0.5,
        "float": float(seed),
        "boolean": seed % 2 == 0,
        "bytes": bytes([seed % 256]),
    }[avro_type]


def sample_event(type_name: str, seed: int = 1) -> Event:
    """An instance of an event type with every field set, optional ones included."""
    data = _sample(catalogue()[type_name].schema, seed)
    return EVENT_TYPES[type_name].model_validate(data)
