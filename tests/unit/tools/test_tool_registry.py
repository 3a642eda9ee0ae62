"""Specs, the registry's argument validation, results, canonical JSON and idempotency keys."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

import pytest

from handlers.tools.base import (
    Tool,
    ToolContext,
    ToolError,
    ToolRegistry,
    ToolResult,
    ToolSpec,
    UnknownToolError,
    builtin_registry,
    canonical_json,
    idempotency_key,
)
from handlers.tools.calculator import CalculatorTool

pytestmark = pytest.mark.unit

ORDER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "customer": {"type": "string", "minLength": 1},
        "items": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string"},
                    "qty": {"type": "integer", "minimum": 1},
                },
                "required": ["sku", "qty"],
                "additionalProperties": False,
            },
        },
        "priority": {"enum": ["low", "high"]},
    },
    "required": ["customer", "items"],
    "additionalProperties": False,
}


class OrderTool(Tool):
    """A tool with a nested schema, to exercise JSON paths in validation errors."""

    def __init__(self) -> None:
        self._spec = ToolSpec(
            name="place_order",
            description="Place an order.",
            parameters=ORDER_SCHEMA,
            risk_tier="high",
        )

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolResult:
        return ToolResult.success({"placed": True})


@pytest.fixture
def registry() -> ToolRegistry:
    return ToolRegistry([CalculatorTool(), OrderTool()])


# --------------------------------------------------------------------------- validation


def test_valid_arguments_have_no_errors(registry: ToolRegistry) -> None:
    assert registry.validate("calculator", {"expression": "1 + 1"}) == []
    args = {"customer": "c1", "items": [{"sku": "a", "qty": 2}], "priority": "high"}
    assert registry.validate("place_order", args) == []


def test_unknown_tool(registry: ToolRegistry) -> None:
    errors = registry.validate("rm_rf", {})
    assert errors == ["unknown tool 'rm_rf' (registered: calculator, place_order)"]
    with pytest.raises(UnknownToolError, match="unknown tool 'rm_rf'") as info:
        registry.get("rm_rf")
    assert info.value.name == "rm_rf"
    assert isinstance(info.value, LookupError)


@pytest.mark.parametrize(
    ("tool", "args", "expected"),
    [
        ("calculator", {"expression": 5}, ["$.expression: 5 is not of type 'string'"]),
        ("calculator", {}, ["$: 'expression' is a required property"]),
        (
            "calculator",
            {"expression": "1", "extra": True},
            ["$: Additional properties are not allowed ('extra' was unexpected)"],
        ),
        ("calculator", ["1 + 1"], ["$: ['1 + 1'] is not of type 'object'"]),
        ("calculator", None, ["$: None is not of type 'object'"]),
        ("calculator", {"expression": ""}, ["$.expression: '' should be non-empty"]),
        (
            "place_order",
            {
                "customer": "c",
                "items": [{"sku": "a", "qty": 1}, {"sku": 7, "qty": "x"}],
            },
            [
                "$.items[1].qty: 'x' is not of type 'integer'",
                "$.items[1].sku: 7 is not of type 'string'",
            ],
        ),
        (
            "place_order",
            {"customer": "c", "items": [{"sku": "a", "qty": 0}], "priority": "urgent"},
            [
                "$.items[0].qty: 0 is less than the minimum of 1",
                "$.priority: 'urgent' is not one of ['low', 'high']",
            ],
        ),
        (
            "place_order",
            {"items": []},
            ["$: 'customer' is a required property", "$.items: [] should be non-empty"],
        ),
    ],
)
def test_validation_errors_name_the_json_path(
    registry: ToolRegistry, tool: str, args: object, expected: list[str]
) -> None:
    assert registry.validate(tool, args) == expected


def test_validation_messages_are_bounded(registry: ToolRegistry) -> None:
    errors = registry.validate("calculator", {"expression": "9" * 5000})
    assert len(errors) == 1
    assert errors[0].startswith("$.expression: ")
    assert errors[0].endswith("...")
    assert len(errors[0]) <= 300

    items = [{"sku": i, "qty": "x"} for i in range(30)]  # two errors per item
    errors = registry.validate("place_order", {"customer": "c", "items": items})
    assert len(errors) == 21
    assert errors[-1] == "... and 40 more errors"


# --------------------------------------------------------------------------- registry


def test_registry_lookup_and_listing(registry: ToolRegistry) -> None:
    assert "calculator" in registry and "nope" not in registry
    assert len(registry) == 2
    assert [s.name for s in registry.specs()] == ["calculator", "place_order"]
    assert [t.spec.name for t in registry] == ["calculator", "place_order"]
    assert isinstance(registry.get("calculator"), CalculatorTool)


def test_duplicate_names_are_refused(registry: ToolRegistry) -> None:
    with pytest.raises(ValueError, match="already registered"):
        registry.register(CalculatorTool())


def test_builtin_registry() -> None:
    registry = builtin_registry()
    assert [s.name for s in registry.specs()] == ["calculator", "http_fetch"]
    for spec in registry.specs():
        assert spec.risk_tier == "low"
        assert spec.idempotent and spec.safe_to_retry
    assert registry.validate("http_fetch", {"url": "https://example.org/"}) == []
    assert registry.validate("http_fetch", {"url": "file:///etc/passwd"}) == [
        "$.url: 'file:///etc/passwd' does not match '^[Hh][Tt][Tt][Pp][Ss]?://'"
    ]


# --------------------------------------------------------------------------- specs


def _spec(**overrides: Any) -> ToolSpec:
    fields: dict[str, Any] = {
        "name": "t",
        "description": "d",
        "parameters": {"type": "object", "properties": {}},
    }
    return ToolSpec(**(fields | overrides))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "Bad Name"}, "must match"),
        ({"name": ""}, "must match"),
        ({"risk_tier": "extreme"}, "unknown risk tier"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": float("nan")}, "timeout_s"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"parameters": {"type": "array"}}, "type 'object'"),
        (
            {"parameters": {"type": "object", "properties": {"a": {"type": "nope"}}}},
            "invalid parameters schema at $.properties.a.type",
        ),
    ],
)
def test_spec_rejects_bad_definitions(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        _spec(**overrides)
    assert message in str(info.value)


def test_spec_is_frozen_and_owns_its_schema() -> None:
    schema: dict[str, Any] = {"type": "object", "properties": {"a": {"type": "string"}}}
    spec = _spec(parameters=schema)
    schema["properties"]["a"]["type"] = "integer"
    assert spec.parameters["properties"]["a"]["type"] == "string"
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]
    assert hash(spec) == hash(_spec())


def test_attempts_only_when_safe_to_retry() -> None:
    assert _spec(max_attempts=5).attempts == 1
    assert _spec(max_attempts=5, safe_to_retry=True).attempts == 5


# --------------------------------------------------------------------------- results


def test_result_invariants() -> None:
    assert ToolResult.success({"a": 1}) == ToolResult(ok=True, data={"a": 1})
    failed = ToolResult.failure("boom", data={"status": 500})
    assert not failed.ok and failed.error == "boom"
    with pytest.raises(ValueError):
        ToolResult(ok=True, error="x")
    with pytest.raises(ValueError):
        ToolResult(ok=False)


def test_tool_error_carries_retryable() -> None:
    err = ToolError("timed out", retryable=True)
    assert err.retryable and str(err) == "timed out"
    assert err.to_result() == ToolResult(ok=False, error="timed out")
    assert ToolError("bad input").retryable is False


# --------------------------------------------------------------------------- idempotency


def test_canonical_json_is_order_independent_and_compact() -> None:
    a = {"b": [1, {"y": 2, "x": 1}], "a": "é"}
    b = {"a": "é", "b": [1, {"x": 1, "y": 2}]}
    assert canonical_json(a) == canonical_json(b) == '{"a":"\\u00e9","b":[1,{"x":1,"y":2}]}'
    assert canonical_json((1, 2)) == canonical_json([1, 2])


@pytest.mark.parametrize(
    "value",
    [
        {1: "a"},
        {"a": float("nan")},
        {"a": float("inf")},
        {"a": {1, 2}},
        {"a": object()},
        b"x",
    ],
)
def test_canonical_json_rejects_what_json_cannot_represent_exactly(
    value: object,
) -> None:
    with pytest.raises((TypeError, ValueError)):
        canonical_json(value)


def test_idempotency_key_matches_documented_encoding() -> None:
    payload = b'["agentstream/idempotency/v1","run-1",3,"calculator",{"expression":"1+1"}]'
    expected = hashlib.sha256(payload).hexdigest()
    assert idempotency_key("run-1", 3, "calculator", {"expression": "1+1"}) == expected


def test_idempotency_key_is_stable() -> None:
    args = {"url": "https://example.org/", "opts": {"b": 2, "a": [1, 2.5, None, True]}}
    reordered = {
        "opts": {"a": [1, 2.5, None, True], "b": 2},
        "url": "https://example.org/",
    }
    key = idempotency_key("run-1", 0, "http_fetch", args)
    assert key == idempotency_key("run-1", 0, "http_fetch", reordered)
    assert len(key) == 64 and all(c in "0123456789abcdef" for c in key)


@pytest.mark.parametrize(
    "other",
    [
        ("run-2", 0, "http_fetch", {"url": "u"}),
        ("run-1", 1, "http_fetch", {"url": "u"}),
        ("run-1", "0", "http_fetch", {"url": "u"}),
        ("run-1", 0, "calculator", {"url": "u"}),
        ("run-1", 0, "http_fetch", {"url": "v"}),
        ("run-1", 0, "http_fetch", {"url": "u", "x": None}),
        ("run-1", 0, "http_fetch", {"url": ["u"]}),
        ("run-1", 0, "http_fetch", {}),
    ],
)
def test_idempotency_key_changes_with_every_field(other: tuple[Any, ...]) -> None:
    assert idempotency_key("run-1", 0, "http_fetch", {"url": "u"}) != idempotency_key(*other)


def test_idempotency_key_has_no_boundary_ambiguity() -> None:
    assert idempotency_key("ab", 1, "c", {}) != idempotency_key("a", 1, "bc", {})
    assert idempotency_key('a","b', 1, "c", {}) != idempotency_key("a", 1, 'b","c', {})
    assert idempotency_key("r", 1, "t", {"n": 1}) != idempotency_key("r", 1, "t", {"n": 1.0})
    assert idempotency_key("r", 1, "t", {"n": 1}) != idempotency_key("r", 1, "t", {"n": "1"})


def test_idempotency_key_rejects_bad_inputs() -> None:
    with pytest.raises(TypeError):
        idempotency_key("r", True, "t", {})
    with pytest.raises(TypeError):
        idempotency_key("r", 1, "t", {1: "x"})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        idempotency_key("r", 1, "t", ["not", "a", "mapping"])  # type: ignore[arg-type]
