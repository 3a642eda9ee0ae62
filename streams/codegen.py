"""Generate `streams/events.py`, the typed event models, from the `.avsc` catalogue.

The `.avsc` files are the contract; the Python models are derived from them, so the two
cannot drift. `python -m streams.codegen` rewrites the module; `--check` exits non-zero
when the module is stale (CI runs it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from streams.catalogue import META_RECORD, NAMESPACE, is_event_record, load_raw

TARGET = Path(__file__).with_name("events.py")

_PRIMITIVES = {
    "string": "str",
    "int": "int",
    "long": "int",
    "float": "float",
    "double": "float",
    "boolean": "bool",
    "bytes": "bytes",
    "null": "None",
}


def _short(fullname: str) -> str:
    return fullname.rsplit(".", 1)[-1]


def _annotation(avro_type: Any) -> str:
    if isinstance(avro_type, str):
        if avro_type in _PRIMITIVES:
            return _PRIMITIVES[avro_type]
        return _short(avro_type)
    if isinstance(avro_type, list):
        # Avro lists "null" first so the default can be null; Python reads better with it last.
        branches = [b for b in avro_type if b != "null"] + [b for b in avro_type if b == "null"]
        return " | ".join(_annotation(branch) for branch in branches)
    kind = avro_type["type"]
    if avro_type.get("logicalType") == "timestamp-millis":
        return "datetime"
    if kind == "array":
        return f"list[{_annotation(avro_type['items'])}]"
    if kind == "map":
        return f"dict[str, {_annotation(avro_type['values'])}]"
    if kind in _PRIMITIVES:
        return _PRIMITIVES[kind]
    raise ValueError(f"unsupported Avro type in catalogue: {avro_type!r}")


def _default(value: Any) -> str:
    if value == []:
        return "Field(default_factory=list)"
    if value == {}:
        return "Field(default_factory=dict)"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _class(schema: dict[str, Any], base: str) -> list[str]:
    name = str(schema["name"])
    lines = [f"class {name}({base}):", f'    """{schema.get("doc", name)}"""', ""]
    if base == "Event":
        lines.append(f'    type_name: ClassVar[str] = "{name}"')
        lines.append(f'    fullname: ClassVar[str] = "{NAMESPACE}.{name}"')
        lines.append("")
    for fld in schema["fields"]:
        if base == "Event" and fld["name"] == "meta":
            continue
        annotation = _annotation(fld["type"])
        default = f" = {_default(fld['default'])}" if "default" in fld else ""
        lines.append(f"    {fld['name']}: {annotation}{default}")
        lines.append(f'    """{fld.get("doc", "")}"""')
    return lines


def render() -> str:
    raw = load_raw()
    shared = [s for s in raw.values() if not is_event_record(s)]
    events = [s for s in raw.values() if is_event_record(s)]
    out = [
        '"""Typed event models, generated from schemas/avro by `python -m streams.codegen`.',
        "",
        "Do not edit by hand: change the `.avsc` files and regenerate.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from datetime import datetime",
        "from typing import ClassVar",
        "",
        "from pydantic import BaseModel, ConfigDict, Field",
        "",
        "",
        "class Record(BaseModel):",
        '    """Base of every generated model: immutable, and strict about unknown fields."""',
        "",
        '    model_config = ConfigDict(frozen=True, extra="forbid")',
        "",
        "",
    ]
    for schema in shared:
        out += _class(schema, "Record") + ["", ""]
    meta = _short(META_RECORD)
    out += [
        "class Event(Record):",
        '    """Base of every event: an envelope (`meta`) plus the fields of its type."""',
        "",
        "    type_name: ClassVar[str]",
        "    fullname: ClassVar[str]",
        f"    meta: {meta}",
        "",
        "",
    ]
    for schema in events:
        out += _class(schema, "Event") + ["", ""]
    out += ["EVENT_TYPES: dict[str, type[Event]] = {", "    cls.type_name: cls", "    for cls in ("]
    out += [f"        {s['name']}," for s in events]
    out += [
        "    )",
        "}",
        '"""Every event type of the catalogue, by short type name."""',
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if events.py is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not TARGET.exists() or TARGET.read_text() != text:
            print("streams/events.py is stale: run `python -m streams.codegen`", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
