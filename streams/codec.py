"""Avro encoding of events in the Confluent wire format.

Every record value is `0x00` (magic byte), a 4-byte big-endian schema id, then the Avro
binary body written with that schema. Any Kafka consumer in any language can decode it
with the schema the id names in the registry.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from typing import Any

import fastavro

from streams.catalogue import EventSchema, by_fullname, catalogue
from streams.errors import PoisonEvent, SchemaRegistryError
from streams.events import EVENT_TYPES, Event
from streams.registry import SchemaRegistry, subject_for

MAGIC_BYTE = 0
_HEADER = struct.Struct(">bI")


class DeadLetterReason:
    """Why a record went to the dead-letter topic (the `reason` header)."""

    TOO_SHORT = "too_short"
    WRONG_MAGIC_BYTE = "wrong_magic_byte"
    UNKNOWN_SCHEMA_ID = "unknown_schema_id"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    UNDECODABLE = "undecodable"
    HANDLER_REJECTED = "handler_rejected"
    RETRIES_EXHAUSTED = "retries_exhausted"


@dataclass(frozen=True)
class WriterSchema:
    """A writer schema fetched from the registry, with what is needed to read its data."""

    schema_id: int
    fullname: str
    type_name: str | None
    """Our event type for this schema, or None when the catalogue does not know it."""
    parsed: Any
    reader: Any
    """Our current schema when it differs from the writer's (Avro schema resolution), else None."""


def split_header(data: bytes) -> int:
    """The schema id of a record value; raises `PoisonEvent` for anything not in the format."""
    if len(data) < _HEADER.size:
        raise PoisonEvent(DeadLetterReason.TOO_SHORT, f"{len(data)} bytes, shorter than the 5-byte header")
    magic, schema_id = _HEADER.unpack_from(data)
    if magic != MAGIC_BYTE:
        raise PoisonEvent(DeadLetterReason.WRONG_MAGIC_BYTE, f"magic byte is {magic}, expected 0")
    return int(schema_id)


def to_avro(event: Event) -> dict[str, Any]:
    """The Avro datum of an event."""
    return event.model_dump()


class EventCodec:
    """Encodes events to, and decodes them from, the Confluent wire format.

    Schema ids are registered lazily per (topic, type) and cached, as are writer schemas
    fetched by id, so the registry is asked once per schema per process.
    """

    def __init__(self, registry: SchemaRegistry, events: dict[str, EventSchema] | None = None):
        self.registry = registry
        self.events = events or catalogue()
        self._by_fullname = by_fullname() if events is None else {s.fullname: s for s in events.values()}
        self._ids: dict[tuple[str, str], int] = {}
        self._writers: dict[int, WriterSchema] = {}

    async def schema_id(self, topic: str, type_name: str) -> int:
        """The id of our schema for `type_name` on `topic`, registering it on first use."""
        key = (topic, type_name)
        cached = self._ids.get(key)
        if cached is not None:
            return cached
        schema = self.events[type_name]
        schema_id = await self.registry.register(subject_for(topic, schema.fullname), schema.schema_json)
        self._ids[key] = schema_id
        self._writers.setdefault(
            schema_id, WriterSchema(schema_id, schema.fullname, type_name, schema.parsed, None)
        )
        return schema_id

    def encode_with(self, schema_id: int, event: Event) -> bytes:
        """Encode with an id already obtained from `schema_id`."""
        out = io.BytesIO()
        out.write(_HEADER.pack(MAGIC_BYTE, schema_id))
        fastavro.schemaless_writer(out, self.events[event.type_name].parsed, to_avro(event))
        return out.getvalue()

    async def encode(self, topic: str, event: Event) -> bytes:
        return self.encode_with(await self.schema_id(topic, event.type_name), event)

    async def writer(self, schema_id: int) -> WriterSchema:
        """The writer schema for an id, fetched from the registry on first use."""
        cached = self._writers.get(schema_id)
        if cached is not None:
            return cached
        try:
            text = await self.registry.schema_by_id(schema_id)
        except SchemaRegistryError as exc:
            if exc.retryable:
                raise
            raise PoisonEvent(DeadLetterReason.UNKNOWN_SCHEMA_ID, str(exc)) from exc
        raw = json.loads(text)
        fullname = raw["name"] if "." in raw["name"] else f"{raw.get('namespace', '')}.{raw['name']}"
        ours = self._by_fullname.get(fullname)
        parsed = fastavro.parse_schema(raw)
        same = ours is not None and ours.schema == raw
        writer = WriterSchema(
            schema_id,
            fullname,
            ours.type_name if ours else None,
            parsed,
            None if ours is None or same else ours.parsed,
        )
        self._writers[schema_id] = writer
        return writer

    def read_datum(self, writer: WriterSchema, data: bytes) -> dict[str, Any]:
        """The Avro datum of a record value, resolved to our schema when they differ."""
        try:
            datum = fastavro.schemaless_reader(
                io.BytesIO(memoryview(data)[_HEADER.size :]), writer.parsed, writer.reader
            )
        except Exception as exc:  # fastavro raises many types on corrupt input
            raise PoisonEvent(DeadLetterReason.UNDECODABLE, f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(datum, dict):
            raise PoisonEvent(DeadLetterReason.UNDECODABLE, "body is not a record")
        return datum

    async def type_of(self, data: bytes) -> str:
        """The event type of a record without decoding its body."""
        writer = await self.writer(split_header(data))
        if writer.type_name is None:
            raise PoisonEvent(
                DeadLetterReason.UNKNOWN_EVENT_TYPE, f"{writer.fullname} is not in this catalogue"
            )
        return writer.type_name

    async def decode(self, data: bytes) -> Event:
        """Decode a record value into its typed event."""
        writer = await self.writer(split_header(data))
        if writer.type_name is None:
            raise PoisonEvent(
                DeadLetterReason.UNKNOWN_EVENT_TYPE, f"{writer.fullname} is not in this catalogue"
            )
        datum = self.read_datum(writer, data)
        try:
            return EVENT_TYPES[writer.type_name].model_validate(datum)
        except ValueError as exc:
            raise PoisonEvent(DeadLetterReason.UNDECODABLE, str(exc)) from exc
