"""The tool interface: specs, call context, results, errors, the registry and idempotency keys.

A tool is a :class:`Tool` with a :class:`ToolSpec` (name, JSON Schema for its arguments,
risk tier, timeout, retry policy) and one ``async run(args, ctx)``. The tool router looks
tools up in a :class:`ToolRegistry`, validates the planner's arguments against the spec's
schema, computes an :func:`idempotency_key` and dispatches; a worker runs the tool and
records its :class:`ToolResult` (or the :class:`ToolError` it raised) as an observation.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from jsonschema import Draft202012Validator  # type: ignore[import-untyped,unused-ignore]
from jsonschema.exceptions import SchemaError  # type: ignore[import-untyped,unused-ignore]

from handlers.tools.egress import NetworkPolicy

if TYPE_CHECKING:
    import httpx

    from handlers.tools.egress import Resolver

__all__ = [
    "IDEMPOTENCY_KEY_VERSION",
    "JSONValue",
    "NetworkPolicy",
    "RiskTier",
    "Tool",
    "ToolContext",
    "ToolError",
    "ToolRegistry",
    "ToolResult",
    "ToolSpec",
    "UnknownToolError",
    "builtin_registry",
    "canonical_json",
    "idempotency_key",
]

JSONValue: TypeAlias = bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"] | None
"""A value that survives a JSON round trip unchanged (modulo int/float spelling)."""

RiskTier = Literal["low", "medium", "high"]
"""How much harm a wrong call can do; the router's approval policy keys off this."""

_TOOL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_MAX_ERRORS = 20
_MAX_ERROR_CHARS = 300


# --------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """What a tool is and how it may be called; the planner sees name, description, schema.

    ``parameters`` is a JSON Schema (Draft 2020-12) for the argument object; it is checked
    and copied on construction and must not be mutated afterwards. ``max_attempts`` only
    takes effect when ``safe_to_retry`` is true (see :attr:`attempts`). ``idempotent`` means
    repeating a call with the same arguments has no further effect.
    """

    name: str
    description: str
    parameters: Mapping[str, Any] = field(hash=False)
    risk_tier: RiskTier = "low"
    timeout_s: float = 30.0
    max_attempts: int = 1
    safe_to_retry: bool = False
    idempotent: bool = False

    def __post_init__(self) -> None:
        if not _TOOL_NAME.match(self.name):
            raise ValueError(
                f"tool name {self.name!r} must match {_TOOL_NAME.pattern} "
                "(lowercase, digits, underscores; usable as a model function name)"
            )
        if self.risk_tier not in ("low", "medium", "high"):
            raise ValueError(f"tool {self.name}: unknown risk tier {self.risk_tier!r}")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ValueError(f"tool {self.name}: timeout_s must be a positive number")
        if self.max_attempts < 1:
            raise ValueError(f"tool {self.name}: max_attempts must be at least 1")
        try:
            Draft202012Validator.check_schema(self.parameters)
        except SchemaError as exc:
            raise ValueError(
                f"tool {self.name}: invalid parameters schema at {exc.json_path}: {exc.message}"
            ) from exc
        if self.parameters.get("type") != "object":
            raise ValueError(f"tool {self.name}: parameters schema must have type 'object'")
        object.__setattr__(self, "parameters", copy.deepcopy(dict(self.parameters)))

    @property
    def attempts(self) -> int:
        """How many times a worker may try one call: 1 unless the tool is safe to retry."""
        return self.max_attempts if self.safe_to_retry else 1


@dataclass(frozen=True, slots=True)
class ToolContext:
    """Who a call is for and what it may touch; built by the router, read by the tool.

    ``idempotency_key`` identifies the side effect (see :func:`idempotency_key`); tools
    with external effects pass it on so a repeated call can be recognised downstream.
    ``network`` is the egress policy the call runs under; the default reaches nothing.
    """

    run_id: str
    tenant_id: str
    tool_call_id: str
    idempotency_key: str
    network: NetworkPolicy = field(default_factory=NetworkPolicy)


@dataclass(frozen=True, slots=True)
class ToolResult:
    """The outcome of one tool call, recorded as an observation.

    ``data`` is untrusted, JSON-able output for the planner. ``error`` is set exactly when
    ``ok`` is false; ``data`` may still carry detail then (e.g. an HTTP error body).
    """

    ok: bool
    data: JSONValue = None
    error: str | None = None

    def __post_init__(self) -> None:
        if self.ok and self.error is not None:
            raise ValueError("a successful ToolResult carries no error")
        if not self.ok and not self.error:
            raise ValueError("a failed ToolResult needs an error message")

    @classmethod
    def success(cls, data: JSONValue = None) -> ToolResult:
        """A successful result carrying ``data``."""
        return cls(ok=True, data=data)

    @classmethod
    def failure(cls, error: str, data: JSONValue = None) -> ToolResult:
        """A failed result; ``data`` may carry detail for the planner."""
        return cls(ok=False, data=data, error=error)


class ToolError(Exception):
    """A tool call failed; the message is meant for the planner and the audit log.

    ``retryable`` says whether the same call may succeed if tried again (timeouts,
    connection resets); workers retry only when the spec is also ``safe_to_retry``.
    """

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable

    def to_result(self) -> ToolResult:
        """This failure as an observation."""
        return ToolResult.failure(self.message)


class UnknownToolError(LookupError):
    """No tool of that name is registered."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        listed = ", ".join(sorted(known)) or "none"
        super().__init__(f"unknown tool {name!r} (registered: {listed})")
        self.name = name


class Tool(ABC):
    """A capability the planner can call. One subclass per built-in tool module."""

    @property
    @abstractmethod
    def spec(self) -> ToolSpec:
        """The tool's name, schema and call policy."""

    @abstractmethod
    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolResult:
        """Execute one call with arguments that already passed :meth:`ToolRegistry.validate`.

        Expected failures are raised as :class:`ToolError`; a tool never lets transport or
        library exceptions escape.
        """


# --------------------------------------------------------------------------- registry


def _truncate(text: str, limit: int = _MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ToolRegistry:
    """The tools a worker can run, by name, with their argument validators."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        self._validators: dict[str, Any] = {}
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool) -> None:
        """Add ``tool``; raises :class:`ValueError` if its name is taken."""
        spec = tool.spec
        if spec.name in self._tools:
            raise ValueError(f"a tool named {spec.name!r} is already registered")
        self._tools[spec.name] = tool
        self._validators[spec.name] = Draft202012Validator(
            spec.parameters, format_checker=Draft202012Validator.FORMAT_CHECKER
        )

    def get(self, name: str) -> Tool:
        """The tool called ``name``; raises :class:`UnknownToolError`."""
        try:
            return self._tools[name]
        except KeyError:
            raise UnknownToolError(name, self._tools) from None

    def specs(self) -> list[ToolSpec]:
        """Every registered spec, sorted by name (stable for prompts and caches)."""
        return [self._tools[name].spec for name in sorted(self._tools)]

    def validate(self, name: str, args: object) -> list[str]:
        """Return every problem with calling ``name`` with ``args``; empty means valid.

        Each message starts with the JSON path of the offending value (``$`` is the
        argument object itself), e.g. ``"$.expression: 5 is not of type 'string'"``.
        """
        validator = self._validators.get(name)
        if validator is None:
            return [str(UnknownToolError(name, self._tools))]
        errors = sorted(
            validator.iter_errors(args),
            key=lambda e: (str(e.json_path), str(e.message)),
        )
        messages = [_truncate(f"{e.json_path}: {e.message}") for e in errors[:_MAX_ERRORS]]
        if len(errors) > _MAX_ERRORS:
            messages.append(f"... and {len(errors) - _MAX_ERRORS} more errors")
        return messages

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter([self._tools[name] for name in sorted(self._tools)])

    def __len__(self) -> int:
        return len(self._tools)


def builtin_registry(
    *,
    resolver: Resolver | None = None,
    http_transport: httpx.AsyncBaseTransport | None = None,
) -> ToolRegistry:
    """A registry holding every built-in tool (``calculator``, ``http_fetch``).

    ``resolver`` and ``http_transport`` are handed to ``http_fetch`` (see
    :class:`handlers.tools.http_fetch.HttpFetchTool`).
    """
    # Imported here: the tool modules import this one.
    from handlers.tools.calculator import CalculatorTool
    from handlers.tools.http_fetch import HttpFetchTool

    return ToolRegistry([CalculatorTool(), HttpFetchTool(resolver=resolver, transport=http_transport)])


# --------------------------------------------------------------------------- idempotency

IDEMPOTENCY_KEY_VERSION = "agentstream/idempotency/v1"
"""Domain tag hashed into every key; bump it if the encoding below ever changes."""


def _check_json(value: object, path: str) -> None:
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path}: {value!r} has no JSON representation")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(item, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                # json.dumps would silently turn 1 into "1" and collide with the string key.
                raise TypeError(f"{path}: object key {key!r} is not a string")
            _check_json(item, f"{path}.{key}")
        return
    raise TypeError(f"{path}: {type(value).__name__} is not JSON-serializable")


def canonical_json(value: object) -> str:
    """Serialize ``value`` to one canonical JSON text.

    Object keys sorted by code point, no insignificant whitespace, non-ASCII escaped as
    ``\\uXXXX`` (so the text is pure ASCII), floats in Python's shortest round-trip form.
    Equal JSON values written with keys in any order give the same text. ``1`` and ``1.0``
    stay distinct, strings are not Unicode-normalized, and a tuple encodes like a list.
    Raises :class:`TypeError` / :class:`ValueError` for values JSON cannot represent
    exactly (non-string keys, NaN, infinities, arbitrary objects).
    """
    _check_json(value, "$")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def idempotency_key(run_id: str, step: int | str, tool: str, args: Mapping[str, Any]) -> str:
    """The key that identifies one side effect of a run: 64 lowercase hex characters.

    It is ``sha256`` over the ASCII bytes of::

        canonical_json(["agentstream/idempotency/v1", run_id, step, tool, args])

    A JSON array of escaped strings is unambiguous: no choice of field values can make
    two different tuples encode to the same bytes (unlike plain concatenation), and the
    step ``1`` differs from the step ``"1"``. Argument objects equal as JSON give equal
    keys whatever their key order.
    """
    if not isinstance(run_id, str) or not isinstance(tool, str):
        raise TypeError("run_id and tool must be strings")
    if isinstance(step, bool) or not isinstance(step, (int, str)):
        raise TypeError("step must be an int or a str")
    if not isinstance(args, Mapping):
        raise TypeError("args must be a mapping")
    payload = canonical_json([IDEMPOTENCY_KEY_VERSION, run_id, step, tool, dict(args)])
    return hashlib.sha256(payload.encode("ascii")).hexdigest()
