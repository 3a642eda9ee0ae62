"""The Confluent wire format codec and the embedded registry."""

from __future__ import annotations

import copy
import io
import json
import struct
from pathlib import Path

import fastavro
import pytest

from streams.catalogue import catalogue
from streams.codec import DeadLetterReason, EventCodec, split_header
from streams.errors import IncompatibleSchema, PoisonEvent
from streams.events import EVENT_TYPES, RunCompleted
from streams.registry import Compatibility, EmbeddedSchemaRegistry, open_registry, subject_for
from tests.support.events import sample_event

pytestmark = pytest.mark.unit
TOPIC = "agentstream.events"


@pytest.fixture
def registry(tmp_path: Path) -> EmbeddedSchemaRegistry:
    return EmbeddedSchemaRegistry(tmp_path / "registry.db")


@pytest.fixture
def codec(registry: EmbeddedSchemaRegistry) -> EventCodec:
    return EventCodec(registry)


@pytest.mark.parametrize("type_name", sorted(EVENT_TYPES))
async def test_every_event_round_trips_in_the_wire_format(codec: EventCodec, type_name: str) -> None:
    event = sample_event(type_name)
    data = await codec.encode(TOPIC, event)
    assert data[0] == 0
    schema_id = struct.unpack(">I", data[1:5])[0]
    assert schema_id == await codec.schema_id(TOPIC, type_name)
    assert await codec.decode(data) == event


async def test_bytes_decode_with_nothing_but_fastavro_and_the_registry(
    codec: EventCodec, registry: EmbeddedSchemaRegistry
) -> None:
    """What any consumer in any language does: read the id, fetch the schema, decode."""
    event = sample_event("ToolCallRequested")
    data = await codec.encode(TOPIC, event)
    schema_id = struct.unpack(">I", data[1:5])[0]
    writer = fastavro.parse_schema(json.loads(await registry.schema_by_id(schema_id)))
    datum = fastavro.schemaless_reader(io.BytesIO(data[5:]), writer)
    assert datum["tool"] == event.tool
    assert datum["meta"]["event_id"] == event.meta.event_id


async def test_ids_are_registered_under_topic_record_name_subjects(
    codec: EventCodec, registry: EmbeddedSchemaRegistry
) -> None:
    first = await codec.schema_id(TOPIC, "RunCompleted")
    same = await registry.register(
        subject_for(TOPIC, "agentstream.events.RunCompleted"), catalogue()["RunCompleted"].schema_json
    )
    assert first == same
    other_topic = await EventCodec(registry).schema_id("other.topic", "RunCompleted")
    assert other_topic == first, "one schema, one global id, whatever the subject"


async def test_a_second_process_gets_the_same_ids(tmp_path: Path) -> None:
    one = EventCodec(EmbeddedSchemaRegistry(tmp_path / "r.db"))
    two = EventCodec(EmbeddedSchemaRegistry(tmp_path / "r.db"))
    assert await one.schema_id(TOPIC, "GoalChanged") == await two.schema_id(TOPIC, "GoalChanged")
    data = await one.encode(TOPIC, sample_event("GoalChanged"))
    assert await two.decode(data) == sample_event("GoalChanged")


async def test_old_writer_data_is_read_with_the_current_schema(
    codec: EventCodec, registry: EmbeddedSchemaRegistry
) -> None:
    """Schema resolution: a record written before a field existed gets the field's default."""
    old = copy.deepcopy(catalogue()["ToolCallDispatched"].schema)
    old["fields"] = [f for f in old["fields"] if f["name"] != "attempt"]
    subject = subject_for(TOPIC, "agentstream.events.ToolCallDispatched")
    old_id = await registry.register(subject, json.dumps(old))
    event = sample_event("ToolCallDispatched")
    datum = event.model_dump()
    del datum["attempt"]
    buffer = io.BytesIO()
    buffer.write(struct.pack(">bI", 0, old_id))
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(old), datum)
    decoded = await codec.decode(buffer.getvalue())
    assert decoded.attempt == 1  # type: ignore[attr-defined]
    assert decoded.tool == event.tool  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", DeadLetterReason.TOO_SHORT),
        (b"\x00\x00\x01", DeadLetterReason.TOO_SHORT),
        (b"\x01\x00\x00\x00\x01payload", DeadLetterReason.WRONG_MAGIC_BYTE),
        (b'{"json": true}', DeadLetterReason.WRONG_MAGIC_BYTE),
        (b"\x00\x00\x0f\x42\x40payload", DeadLetterReason.UNKNOWN_SCHEMA_ID),
    ],
)
async def test_bad_headers_are_poison(codec: EventCodec, data: bytes, reason: str) -> None:
    with pytest.raises(PoisonEvent) as caught:
        await codec.decode(data)
    assert caught.value.reason == reason


async def test_a_corrupt_body_is_poison(codec: EventCodec) -> None:
    good = await codec.encode(TOPIC, sample_event("RunCompleted"))
    for corrupt in (good[:5], good[:5] + b"\xff" * 9, good[:12]):
        with pytest.raises(PoisonEvent) as caught:
            await codec.decode(corrupt)
        assert caught.value.reason == DeadLetterReason.UNDECODABLE


async def test_a_type_outside_the_catalogue_is_poison(
    codec: EventCodec, registry: EmbeddedSchemaRegistry
) -> None:
    foreign = {
        "type": "record",
        "name": "Alien",
        "namespace": "elsewhere",
        "fields": [{"name": "x", "type": "int"}],
    }
    schema_id = await registry.register("t-elsewhere.Alien", json.dumps(foreign))
    data = struct.pack(">bI", 0, schema_id) + b"\x02"
    with pytest.raises(PoisonEvent) as caught:
        await codec.decode(data)
    assert caught.value.reason == DeadLetterReason.UNKNOWN_EVENT_TYPE


def test_split_header_reads_the_id() -> None:
    assert split_header(b"\x00\x00\x00\x01\x00rest") == 256


async def test_registry_refuses_an_incompatible_schema(registry: EmbeddedSchemaRegistry) -> None:
    subject = "t-agentstream.events.RunCompleted"
    current = catalogue()["RunCompleted"].schema
    await registry.register(subject, json.dumps(current))
    broken = copy.deepcopy(current)
    next(f for f in broken["fields"] if f["name"] == "answer")["type"] = "int"
    result = await registry.check(subject, json.dumps(broken))
    assert not result.compatible and result.messages
    with pytest.raises(IncompatibleSchema):
        await registry.register(subject, json.dumps(broken))
    await registry.set_compatibility(subject, Compatibility.NONE)
    assert await registry.register(subject, json.dumps(broken)) > 0


def test_registry_urls() -> None:
    assert isinstance(open_registry("sqlite://:memory:"), EmbeddedSchemaRegistry)
    from streams.errors import ConfigError

    with pytest.raises(ConfigError):
        open_registry("ftp://nope")


def test_model_is_immutable_and_strict() -> None:
    event = sample_event("RunCompleted")
    assert isinstance(event, RunCompleted)
    with pytest.raises(Exception):
        event.answer = "changed"  # type: ignore[misc]
    with pytest.raises(Exception):
        RunCompleted.model_validate({**event.model_dump(), "surprise": 1})
