"""Schema evolution: every released version of every event schema, and the rule they obey.

`schemas/avro/releases.json` keeps each event type's released schemas, oldest first. The
catalogue must stay FULL_TRANSITIVE compatible with all of them: new code reads every
old record (BACKWARD) and consumers still running old schemas read every new record
(FORWARD). In practice: add fields only with defaults, remove only fields that have
defaults, never change a type; rename with aliases.

`agentstream schemas check` verifies the rule; `agentstream schemas release` records the
current schemas once they pass, and the test suite fails while a change is unrecorded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from streams.catalogue import EventSchema, catalogue, schema_dir
from streams.registry import Compatibility, canonical, check_compatibility

RULE = Compatibility.FULL_TRANSITIVE


def releases_path() -> Path:
    return schema_dir() / "releases.json"


def load_releases(path: Path | None = None) -> dict[str, list[str]]:
    path = path or releases_path()
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {name: [canonical(json.dumps(s)) for s in versions] for name, versions in data.items()}


@dataclass(frozen=True)
class EvolutionReport:
    """What is wrong with the catalogue against its releases."""

    incompatible: dict[str, list[str]]
    """Event full name -> why the current schema breaks a released one."""
    unreleased: list[str]
    """Event full names whose current schema is not the last released one."""

    @property
    def ok(self) -> bool:
        return not self.incompatible and not self.unreleased


def check(
    events: dict[str, EventSchema] | None = None, releases: dict[str, list[str]] | None = None
) -> EvolutionReport:
    events = events or catalogue()
    releases = load_releases() if releases is None else releases
    incompatible: dict[str, list[str]] = {}
    unreleased: list[str] = []
    for schema in events.values():
        history = releases.get(schema.fullname, [])
        result = check_compatibility(canonical(schema.schema_json), history, RULE)
        if not result.compatible:
            incompatible[schema.fullname] = result.messages
        if not history or history[-1] != canonical(schema.schema_json):
            unreleased.append(schema.fullname)
    return EvolutionReport(incompatible, sorted(unreleased))


def release(path: Path | None = None) -> list[str]:
    """Record the current schemas as released; refuses while any is incompatible."""
    path = path or releases_path()
    report = check(releases=load_releases(path))
    if report.incompatible:
        raise ValueError(
            "incompatible schemas cannot be released: " + json.dumps(report.incompatible, indent=2)
        )
    data = json.loads(path.read_text()) if path.exists() else {}
    for schema in catalogue().values():
        if schema.fullname in report.unreleased:
            data.setdefault(schema.fullname, []).append(schema.schema)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return report.unreleased
