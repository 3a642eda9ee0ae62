"""Provider-neutral conversation model shared by the planner and every provider adapter.

Adapters translate these types to and from one wire format each; nothing outside an
adapter should know a provider's JSON shape. All models are frozen and JSON round-trip
cleanly, so requests and responses can be recorded in events and replayed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

__all__ = [
    "AssistantMessage",
    "Message",
    "ModelRequest",
    "ModelResponse",
    "StopReason",
    "SystemMessage",
    "ToolCall",
    "ToolDefinition",
    "ToolResultMessage",
    "Usage",
    "UserMessage",
]

_T = TypeVar("_T")

# Accepts any sequence (lists are convenient at call sites) but stores a tuple, so a
# frozen model cannot be mutated through its collections either.
FrozenSeq = Annotated[Sequence[_T], AfterValidator(tuple)]

StopReason = Literal[
    "end_turn",
    "tool_use",
    "max_tokens",
    "stop_sequence",
    "content_filter",
    "refusal",
    "other",
]
"""Why the model stopped, normalised across providers."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SystemMessage(_Frozen):
    """Operator instructions; adapters put them where the provider expects them."""

    kind: Literal["system"] = "system"
    content: str


class UserMessage(_Frozen):
    """A turn written by the user (or the planner speaking for the user)."""

    kind: Literal["user"] = "user"
    content: str


class ToolCall(_Frozen):
    """One tool invocation requested by the model, correlated to its result by ``id``.

    When the model emitted arguments that are not a JSON object, ``arguments`` is empty,
    ``arguments_error`` says why and ``arguments_raw`` keeps the exact text, so the
    planner can show the model its mistake instead of dropping the call.
    """

    id: str
    """Provider-assigned call id; the matching ``ToolResultMessage.tool_call_id``."""
    name: str
    """Name of the tool, as in ``ToolDefinition.name``."""
    arguments: dict[str, Any] = Field(default_factory=dict)
    """Parsed arguments; empty when ``arguments_error`` is set."""
    arguments_raw: str | None = None
    """The arguments text exactly as the model produced it, when it came as text."""
    arguments_error: str | None = None
    """Why the arguments could not be parsed into a JSON object; ``None`` when valid."""

    @property
    def arguments_valid(self) -> bool:
        """True when ``arguments`` holds what the model meant to send."""
        return self.arguments_error is None

    @classmethod
    def from_raw_arguments(cls, *, id: str, name: str, raw: str) -> ToolCall:
        """Build a call from arguments sent as JSON text (OpenAI-style wire formats)."""
        if not raw.strip():
            # Several servers send "" for a tool without parameters.
            return cls(id=id, name=name, arguments={}, arguments_raw=raw)
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError as exc:
            return cls(
                id=id,
                name=name,
                arguments_raw=raw,
                arguments_error=f"invalid JSON: {exc}",
            )
        if not isinstance(parsed, dict):
            return cls(
                id=id,
                name=name,
                arguments_raw=raw,
                arguments_error=(f"arguments must be a JSON object, got {type(parsed).__name__}"),
            )
        return cls(id=id, name=name, arguments=parsed, arguments_raw=raw)

    def arguments_json(self) -> str:
        """Arguments as JSON text: the raw text if there is one, else a compact dump."""
        if self.arguments_raw is not None:
            return self.arguments_raw
        return json.dumps(self.arguments, separators=(",", ":"), ensure_ascii=False)


class AssistantMessage(_Frozen):
    """A turn produced by the model: text and/or tool calls."""

    kind: Literal["assistant"] = "assistant"
    text: str = ""
    tool_calls: FrozenSeq[ToolCall] = ()


class ToolResultMessage(_Frozen):
    """The outcome of one tool call, fed back to the model."""

    kind: Literal["tool_result"] = "tool_result"
    tool_call_id: str
    """``ToolCall.id`` of the call this answers."""
    content: str
    """Tool output (already bounded and sanitised by the tool router)."""
    is_error: bool = False
    """True when the tool failed or the call was rejected."""


Message = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolResultMessage,
    Field(discriminator="kind"),
]
"""Any message in a conversation, tagged by ``kind``."""


class ToolDefinition(_Frozen):
    """A tool the model may call."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    """JSON Schema of the arguments object."""


class ModelRequest(_Frozen):
    """Everything needed for one completion, independent of provider."""

    messages: FrozenSeq[Message]
    tools: FrozenSeq[ToolDefinition] = ()
    max_tokens: int = Field(default=1024, gt=0)
    """Upper bound on generated tokens."""
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    """Sampling temperature; ``None`` leaves the provider default."""


class Usage(_Frozen):
    """Tokens billed for one or more completions."""

    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
        )


class ModelResponse(_Frozen):
    """One completion, normalised across providers."""

    text: str = ""
    tool_calls: FrozenSeq[ToolCall] = ()
    usage: Usage = Usage()
    model: str
    """The model that actually answered, as reported by the provider."""
    stop_reason: StopReason = "other"
    raw_stop_reason: str | None = None
    """The provider's own stop/finish reason, for diagnostics."""
    cost_usd: float = Field(default=0.0, ge=0.0)
    cost_known: bool = False
    """False when ``model`` has no known price: ``cost_usd`` is then 0, not free."""

    def to_message(self) -> AssistantMessage:
        """The assistant turn to append to the conversation for the next request."""
        return AssistantMessage(text=self.text, tool_calls=self.tool_calls)
