"""The catalogue, the generated models and the evolution rule."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime

import fastavro
import pytest
from fastavro.schema import load_schema

from streams import codegen
from streams.catalogue import catalogue, load_raw, schema_dir
from streams.events import EVENT_TYPES
from streams.evolution import RULE, check
from streams.registry import Compatibility, check_compatibility
from tests.support.events import sample_event

pytestmark = pytest.mark.unit

REQUIRED_TYPES = {
    "TaskSubmitted",
    "PlanProposed",
    "ToolCallRequested",
    "ToolCallRejected",
    "ApprovalRequested",
    "ApprovalDecided",
    "ToolCallDispatched",
    "SandboxJobLaunched",
    "ObservationRecorded",
    "MemoryWritten",
    "BudgetCharged",
    "RunSuspended",
    "RunResumed",
    "RunCompleted",
    "RunFailed",
    "RunAborted",
    "RunCancelled",
    "GoalChanged",
    "SubtaskPlanned",
    "SubtaskCompleted",
    "AgentMessage",
}


def test_catalogue_has_every_required_event_type() -> None:
    assert set(catalogue()) >= REQUIRED_TYPES
    assert set(EVENT_TYPES) == set(catalogue())


def test_generated_models_are_current() -> None:
    assert codegen.main(["--check"]) == 0, "run `python -m streams.codegen`"


def test_every_event_carries_the_full_meta() -> None:
    meta = load_raw()["agentstream.events.EventMeta"]
    names = [f["name"] for f in meta["fields"]]
    assert names == [
        "event_id",
        "run_id",
        "tenant_id",
        "causation_id",
        "correlation_id",
        "trace_id",
        "occurred_at",
        "producer",
    ]
    occurred = next(f for f in meta["fields"] if f["name"] == "occurred_at")
    assert occurred["type"] == {"type": "long", "logicalType": "timestamp-millis"}
    for schema in catalogue().values():
        assert schema.schema["fields"][0]["name"] == "meta"


@pytest.mark.parametrize("type_name", sorted(EVENT_TYPES))
def test_model_fields_match_schema(type_name: str) -> None:
    """Each model has exactly the schema's fields, with the same optionality and defaults."""
    model = EVENT_TYPES[type_name]
    fields = catalogue()[type_name].schema["fields"]
    assert list(model.model_fields) == [f["name"] for f in fields]
    for f in fields:
        info = model.model_fields[f["name"]]
        if "default" in f:
            assert not info.is_required(), f["name"]
            assert info.get_default(call_default_factory=True) == f["default"], f["name"]
        else:
            assert info.is_required(), f["name"]


@pytest.mark.parametrize("type_name", sorted(EVENT_TYPES))
def test_every_event_round_trips_through_its_avro_schema(type_name: str) -> None:
    event = sample_event(type_name)
    schema = catalogue()[type_name].parsed
    datum = event.model_dump()
    fastavro.validation.validate(datum, schema, raise_errors=True)
    import io

    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, datum)
    buffer.seek(0)
    back = EVENT_TYPES[type_name].model_validate(fastavro.schemaless_reader(buffer, schema))
    assert back == event


def test_fastavro_load_schema_resolves_a_file_on_its_own() -> None:
    """An outside consumer needs only the .avsc files and fastavro."""
    parsed = load_schema(str(schema_dir() / "agentstream.events.TaskSubmitted.avsc"))
    assert parsed["name"] == "agentstream.events.TaskSubmitted"


def test_catalogue_obeys_the_evolution_rule() -> None:
    report = check()
    assert report.incompatible == {}
    assert report.unreleased == [], "run `agentstream schemas release` after a compatible change"


def _edited(type_name: str, edit: object) -> str:
    schema = copy.deepcopy(catalogue()[type_name].schema)
    edit(schema)  # type: ignore[operator]
    return json.dumps(schema)


def _current(type_name: str) -> list[str]:
    return [catalogue()[type_name].schema_json]


def test_adding_an_optional_field_with_a_default_passes() -> None:
    new = _edited(
        "RunCompleted",
        lambda s: s["fields"].append({"name": "summary", "type": ["null", "string"], "default": None}),
    )
    assert check_compatibility(new, _current("RunCompleted"), RULE).compatible


def test_removing_a_field_without_a_default_fails() -> None:
    def drop_answer(schema: dict) -> None:  # type: ignore[type-arg]
        schema["fields"] = [f for f in schema["fields"] if f["name"] != "answer"]

    result = check_compatibility(_edited("RunCompleted", drop_answer), _current("RunCompleted"), RULE)
    assert not result.compatible
    assert any("answer" in m for m in result.messages)


def test_changing_a_type_fails() -> None:
    def answer_to_int(schema: dict) -> None:  # type: ignore[type-arg]
        next(f for f in schema["fields"] if f["name"] == "answer")["type"] = "int"

    result = check_compatibility(_edited("RunCompleted", answer_to_int), _current("RunCompleted"), RULE)
    assert not result.compatible


def test_adding_a_field_without_a_default_fails_backward() -> None:
    new = _edited("RunCompleted", lambda s: s["fields"].append({"name": "x", "type": "string"}))
    assert not check_compatibility(new, _current("RunCompleted"), Compatibility.BACKWARD).compatible


def test_unreleased_and_incompatible_changes_are_reported() -> None:
    releases = {s.fullname: [s.schema_json] for s in catalogue().values()}
    name = catalogue()["RunCompleted"].fullname
    old = copy.deepcopy(catalogue()["RunCompleted"].schema)
    next(f for f in old["fields"] if f["name"] == "answer")["type"] = "int"
    releases[name] = [json.dumps(old)]
    report = check(releases=releases)
    assert name in report.incompatible and name in report.unreleased
    assert not report.ok


def test_timestamps_keep_millisecond_precision_and_utc() -> None:
    event = sample_event("RunCompleted")
    assert event.meta.occurred_at.tzinfo is not None
    assert event.meta.occurred_at.astimezone(UTC) == event.meta.occurred_at
    assert isinstance(event.meta.occurred_at, datetime)
