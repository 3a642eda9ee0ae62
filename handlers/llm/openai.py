"""Adapter for the OpenAI Chat Completions wire format (and compatible endpoints).

Configured by ``OPENAI_BASE_URL`` (default the public API) and ``OPENAI_API_KEY``; a key
is only required for the public API, so keyless OpenAI-compatible servers work too.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict

from handlers.llm._http import HttpModelClient, parse_wire
from handlers.llm.base import ModelConfigError
from handlers.llm.messages import (
    AssistantMessage,
    Message,
    ModelRequest,
    ModelResponse,
    StopReason,
    SystemMessage,
    ToolCall,
    ToolDefinition,
    Usage,
    UserMessage,
)
from handlers.llm.pricing import PriceTable

__all__ = ["DEFAULT_OPENAI_BASE_URL", "OpenAIModel"]

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"

TOOL_ERROR_PREFIX = "[tool error] "
"""Chat Completions has no error flag on tool results, so the text marks failures."""

_STOP_REASONS: dict[str, StopReason] = {
    "stop": "end_turn",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "length": "max_tokens",
    "content_filter": "content_filter",
}


class OpenAIModel(HttpModelClient):
    """Completes requests via Chat Completions: ``POST {base_url}/chat/completions``."""

    provider = "openai"

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 120.0,
        prices: PriceTable | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        base = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_OPENAI_BASE_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self._official = base == DEFAULT_OPENAI_BASE_URL
        if not key and self._official:
            raise ModelConfigError("set OPENAI_API_KEY to use the OpenAI API", provider=self.provider)
        super().__init__(model, timeout=timeout, prices=prices, http_client=http_client)
        self.base_url = base
        self._api_key = key

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Send ``request`` as one chat completion and normalise the first choice."""
        headers = {"content-type": "application/json"}
        if self._api_key:
            headers["authorization"] = f"Bearer {self._api_key}"
        data = await self._post(
            f"{self.base_url}/chat/completions",
            body=self.request_body(request),
            headers=headers,
        )
        return self.parse_response(data)

    def request_body(self, request: ModelRequest) -> dict[str, Any]:
        """The Chat Completions JSON body for ``request``."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [_wire_message(m) for m in request.messages],
        }
        # The public API deprecated max_tokens (o-series models reject it), while
        # several compatible servers silently ignore max_completion_tokens and
        # generate without bound.
        body["max_completion_tokens" if self._official else "max_tokens"] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.tools:
            body["tools"] = [_wire_tool(t) for t in request.tools]
        return body

    def parse_response(self, data: dict[str, Any]) -> ModelResponse:
        """Normalise a Chat Completions response body."""
        wire = parse_wire(_Completion, data, self.provider)
        if not wire.choices:
            return self._response(wire, text="", tool_calls=[], finish_reason=None)
        choice = wire.choices[0]
        message = choice.message
        calls = [
            ToolCall.from_raw_arguments(id=c.id, name=c.function.name, raw=c.function.arguments)
            for c in message.tool_calls or []
        ]
        text = message.content or message.refusal or ""
        return self._response(wire, text=text, tool_calls=calls, finish_reason=choice.finish_reason)

    def _response(
        self,
        wire: _Completion,
        *,
        text: str,
        tool_calls: list[ToolCall],
        finish_reason: str | None,
    ) -> ModelResponse:
        usage = Usage(
            input_tokens=wire.usage.prompt_tokens if wire.usage else 0,
            output_tokens=wire.usage.completion_tokens if wire.usage else 0,
        )
        model = wire.model or self.model
        cost = self.cost(model, usage)
        stop: StopReason = _STOP_REASONS.get(finish_reason or "", "other")
        if tool_calls and stop == "end_turn":
            # Some compatible servers report "stop" even when they returned tool calls.
            stop = "tool_use"
        return ModelResponse(
            text=text,
            tool_calls=tool_calls,
            usage=usage,
            model=model,
            stop_reason=stop,
            raw_stop_reason=finish_reason,
            cost_usd=cost.usd,
            cost_known=cost.known,
        )


def _wire_message(message: Message) -> dict[str, Any]:
    if isinstance(message, SystemMessage):
        return {"role": "system", "content": message.content}
    if isinstance(message, UserMessage):
        return {"role": "user", "content": message.content}
    if isinstance(message, AssistantMessage):
        # content may only be null when the turn carries tool calls.
        content = message.text or (None if message.tool_calls else "")
        out: dict[str, Any] = {"role": "assistant", "content": content}
        if message.tool_calls:
            out["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    # The raw text is sent back as-is so a repair round shows the model
                    # exactly what it produced.
                    "function": {"name": call.name, "arguments": call.arguments_json()},
                }
                for call in message.tool_calls
            ]
        return out
    result = message.content
    if message.is_error:
        result = TOOL_ERROR_PREFIX + result
    return {"role": "tool", "tool_call_id": message.tool_call_id, "content": result}


def _wire_tool(tool: ToolDefinition) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.parameters,
        },
    }


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Function(_Wire):
    name: str
    arguments: str = ""


class _ToolCall(_Wire):
    id: str
    function: _Function


class _Message(_Wire):
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Choice(_Wire):
    message: _Message
    finish_reason: str | None = None


class _Usage(_Wire):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Completion(_Wire):
    model: str | None = None
    choices: list[_Choice]
    usage: _Usage | None = None
