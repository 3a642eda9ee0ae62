"""The event catalogue: the `.avsc` files in `schemas/avro/`, loaded once.

Each file is named after the full name of the record it defines
(`agentstream.events.TaskSubmitted.avsc`), the layout `fastavro.schema.load_schema`
resolves by itself, so any consumer can load an event schema with one call. Shared
records (`EventMeta`, `Budget`, `Usage`) live in their own files and are referenced by
name; an *event* is a record whose first field is `meta` of type `EventMeta`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastavro

NAMESPACE = "agentstream.events"
META_RECORD = f"{NAMESPACE}.EventMeta"


def schema_dir() -> Path:
    """Directory holding the `.avsc` files: the source tree's, or the copy shipped in the wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "schemas" / "avro", here / "avro_schemas"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("the Avro schemas are missing: expected schemas/avro/ next to streams/")


@dataclass(frozen=True)
class EventSchema:
    """One event type of the catalogue: its short name, full name and self-contained schema."""

    type_name: str
    fullname: str
    schema: dict[str, Any]
    """The schema with every referenced record inlined, as registered with a registry."""
    parsed: Any
    """The same schema parsed by fastavro, ready for reading and writing."""

    @property
    def schema_json(self) -> str:
        return json.dumps(self.schema, separators=(",", ":"), sort_keys=True)


def _fullname(schema: dict[str, Any]) -> str:
    name = str(schema["name"])
    return name if "." in name else f"{schema.get('namespace', NAMESPACE)}.{name}"


def expand(schema: Any, named: dict[str, dict[str, Any]], defined: set[str] | None = None) -> Any:
    """Inline named records referenced by full name, the first time each one appears.

    The result is a standalone schema, which is what a schema registry stores and what a
    consumer in any language can parse without our files.
    """
    defined = set() if defined is None else defined
    if isinstance(schema, str):
        if schema in named and schema not in defined:
            return expand(named[schema], named, defined)
        return schema
    if isinstance(schema, list):
        return [expand(branch, named, defined) for branch in schema]
    if isinstance(schema, dict):
        kind = schema.get("type")
        if kind == "record":
            defined.add(_fullname(schema))
            fields = [{**fld, "type": expand(fld["type"], named, defined)} for fld in schema["fields"]]
            return {**schema, "fields": fields}
        if kind == "array":
            return {**schema, "items": expand(schema["items"], named, defined)}
        if kind == "map":
            return {**schema, "values": expand(schema["values"], named, defined)}
        if kind in ("enum", "fixed"):
            defined.add(_fullname(schema))
            return schema
        if isinstance(kind, (dict, list)):
            return {**schema, "type": expand(kind, named, defined)}
    return schema


def is_event_record(schema: dict[str, Any]) -> bool:
    fields = schema.get("fields") or []
    return bool(fields) and fields[0]["name"] == "meta" and fields[0]["type"] == META_RECORD


def load_raw(directory: Path | None = None) -> dict[str, dict[str, Any]]:
    """Every `.avsc` file of the catalogue as JSON, keyed by full name."""
    directory = directory or schema_dir()
    raw: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.avsc")):
        schema = json.loads(path.read_text())
        fullname = _fullname(schema)
        if path.stem != fullname:
            raise ValueError(f"{path.name} defines {fullname}; name the file {fullname}.avsc")
        raw[fullname] = schema
    return raw


def build(raw: dict[str, dict[str, Any]]) -> dict[str, EventSchema]:
    """Event schemas keyed by short type name, from the raw catalogue."""
    events: dict[str, EventSchema] = {}
    for fullname, schema in raw.items():
        if not is_event_record(schema):
            continue
        expanded = expand(schema, raw)
        parsed = fastavro.parse_schema(expanded)
        events[str(schema["name"])] = EventSchema(str(schema["name"]), fullname, expanded, parsed)
    return events


@cache
def catalogue() -> dict[str, EventSchema]:
    """The event schemas of this installation, keyed by short type name."""
    return build(load_raw())


@cache
def by_fullname() -> dict[str, EventSchema]:
    return {s.fullname: s for s in catalogue().values()}
