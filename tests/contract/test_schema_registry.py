"""The SchemaRegistry contract, run against the embedded registry and a real
Confluent-compatible registry (Apicurio Registry, speaking the Confluent REST API)."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from streams.catalogue import catalogue
from streams.codec import EventCodec
from streams.errors import IncompatibleSchema, SchemaRegistryError
from streams.registry import (
    Compatibility,
    ConfluentSchemaRegistry,
    EmbeddedSchemaRegistry,
    SchemaRegistry,
    open_registry,
    subject_for,
)
from tests.support.events import sample_event


@pytest.fixture(
    params=[
        pytest.param("embedded", marks=pytest.mark.contract),
        pytest.param(
            "confluent", marks=[pytest.mark.contract, pytest.mark.integration, pytest.mark.registry]
        ),
    ]
)
async def registry(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SchemaRegistry]:
    if request.param == "embedded":
        opened: SchemaRegistry = EmbeddedSchemaRegistry(tmp_path / "registry.db")
    else:
        opened = open_registry(request.getfixturevalue("registry_url"))
        assert isinstance(opened, ConfluentSchemaRegistry)
    yield opened
    await opened.aclose()


@pytest.fixture
def topic() -> str:
    return f"t{uuid.uuid4().hex[:10]}.events"


def _schema(type_name: str) -> dict:  # type: ignore[type-arg]
    return copy.deepcopy(catalogue()[type_name].schema)


async def test_register_is_idempotent_and_ids_resolve(registry: SchemaRegistry, topic: str) -> None:
    subject = subject_for(topic, "agentstream.events.RunCompleted")
    text = catalogue()["RunCompleted"].schema_json
    first = await registry.register(subject, text)
    assert await registry.register(subject, text) == first
    assert json.loads(await registry.schema_by_id(first)) == json.loads(text)


async def test_unknown_id_is_a_clear_error(registry: SchemaRegistry) -> None:
    with pytest.raises(SchemaRegistryError) as caught:
        await registry.schema_by_id(2_000_000_000)
    assert not caught.value.retryable


async def test_backward_rule_accepts_a_new_optional_field_and_refuses_a_type_change(
    registry: SchemaRegistry, topic: str
) -> None:
    subject = subject_for(topic, "agentstream.events.RunCompleted")
    await registry.set_compatibility(subject, Compatibility.BACKWARD)
    await registry.register(subject, json.dumps(_schema("RunCompleted")))

    added = _schema("RunCompleted")
    added["fields"].append({"name": "note", "type": ["null", "string"], "default": None})
    assert (await registry.check(subject, json.dumps(added))).compatible
    assert await registry.register(subject, json.dumps(added)) > 0

    retyped = _schema("RunCompleted")
    next(f for f in retyped["fields"] if f["name"] == "answer")["type"] = "int"
    result = await registry.check(subject, json.dumps(retyped))
    assert not result.compatible
    with pytest.raises(IncompatibleSchema):
        await registry.register(subject, json.dumps(retyped))

    required = _schema("RunCompleted")
    required["fields"].append({"name": "mandatory", "type": "string"})
    assert not (await registry.check(subject, json.dumps(required))).compatible


async def test_a_subject_without_versions_accepts_anything(registry: SchemaRegistry, topic: str) -> None:
    assert (await registry.check(subject_for(topic, "x.Y"), json.dumps(_schema("GoalChanged")))).compatible


async def test_events_round_trip_through_the_registry_between_processes(
    registry: SchemaRegistry, topic: str
) -> None:
    writer = EventCodec(registry)
    reader = EventCodec(registry)  # a cold cache: it must fetch writer schemas by id
    for type_name in ("TaskSubmitted", "ToolCallRequested", "ObservationRecorded", "RunCompleted"):
        event = sample_event(type_name)
        assert await reader.decode(await writer.encode(topic, event)) == event
