"""Adapter for the Anthropic Messages wire format.

Configured by ``ANTHROPIC_BASE_URL`` (default the public API) and ``ANTHROPIC_API_KEY``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict

from handlers.llm._http import HttpModelClient, parse_wire
from handlers.llm.base import ModelConfigError, ResponseFormatError
from handlers.llm.messages import (
    AssistantMessage,
    ModelRequest,
    ModelResponse,
    StopReason,
    SystemMessage,
    ToolCall,
    ToolDefinition,
    ToolResultMessage,
    Usage,
    UserMessage,
)
from handlers.llm.pricing import PriceTable

__all__ = ["ANTHROPIC_VERSION", "DEFAULT_ANTHROPIC_BASE_URL", "AnthropicModel"]

DEFAULT_ANTHROPIC_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"

_STOP_REASONS: dict[str, StopReason] = {
    "end_turn": "end_turn",
    "tool_use": "tool_use",
    "max_tokens": "max_tokens",
    "stop_sequence": "stop_sequence",
    "refusal": "refusal",
}


class AnthropicModel(HttpModelClient):
    """Completes requests with the Messages API: ``POST {base_url}/v1/messages``."""

    provider = "anthropic"

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
        base = base_url or os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_ANTHROPIC_BASE_URL
        key = api_key if api_key is not None else os.environ.get("ANTHROPIC_API_KEY")
        if not key and base.rstrip("/") == DEFAULT_ANTHROPIC_BASE_URL:
            raise ModelConfigError("set ANTHROPIC_API_KEY to use the Anthropic API", provider=self.provider)
        super().__init__(model, timeout=timeout, prices=prices, http_client=http_client)
        self.base_url = base.rstrip("/")
        self._api_key = key

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Send ``request`` as one Messages call and normalise the reply."""
        headers = {
            "content-type": "application/json",
            "anthropic-version": ANTHROPIC_VERSION,
        }
        if self._api_key:
            headers["x-api-key"] = self._api_key
        data = await self._post(
            f"{self.base_url}/v1/messages",
            body=self.request_body(request),
            headers=headers,
        )
        return self.parse_response(data)

    def request_body(self, request: ModelRequest) -> dict[str, Any]:
        """The Messages JSON body for ``request``."""
        system: list[str] = []
        turns: list[dict[str, Any]] = []

        def add(role: str, blocks: list[dict[str, Any]]) -> None:
            # One user turn must carry every tool_result answering the previous
            # assistant turn, so consecutive same-role messages merge into one turn.
            if not blocks:
                return
            if turns and turns[-1]["role"] == role:
                turns[-1]["content"].extend(blocks)
            else:
                turns.append({"role": role, "content": blocks})

        for message in request.messages:
            if isinstance(message, SystemMessage):
                # The Messages API has no system role; instructions are top-level.
                system.append(message.content)
            elif isinstance(message, UserMessage):
                add("user", [{"type": "text", "text": message.content}])
            elif isinstance(message, AssistantMessage):
                add("assistant", _assistant_blocks(message))
            elif isinstance(message, ToolResultMessage):
                add("user", [_tool_result_block(message)])

        for turn in turns:
            if turn["role"] == "user":
                # The API requires tool_result blocks before any text in a user turn.
                turn["content"].sort(key=lambda block: block["type"] != "tool_result")

        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "messages": turns,
        }
        if system:
            body["system"] = "\n\n".join(system)
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.tools:
            body["tools"] = [_wire_tool(t) for t in request.tools]
        return body

    def parse_response(self, data: dict[str, Any]) -> ModelResponse:
        """Normalise a Messages response body."""
        wire = parse_wire(_Message, data, self.provider)
        texts: list[str] = []
        calls: list[ToolCall] = []
        for block in wire.content:
            kind = block.get("type")
            if kind == "text":
                texts.append(str(block.get("text", "")))
            elif kind == "tool_use":
                calls.append(self._tool_call(block))
            # Other blocks (thinking, server tools) carry nothing the planner consumes.
        usage = Usage(input_tokens=wire.usage.input_tokens, output_tokens=wire.usage.output_tokens)
        model = wire.model or self.model
        cost = self.cost(model, usage)
        return ModelResponse(
            text="".join(texts),
            tool_calls=calls,
            usage=usage,
            model=model,
            stop_reason=_STOP_REASONS.get(wire.stop_reason or "", "other"),
            raw_stop_reason=wire.stop_reason,
            cost_usd=cost.usd,
            cost_known=cost.known,
        )

    def _tool_call(self, block: dict[str, Any]) -> ToolCall:
        call_id, name = block.get("id"), block.get("name")
        if not isinstance(call_id, str) or not isinstance(name, str):
            raise ResponseFormatError("tool_use block without id or name", provider=self.provider)
        arguments = block.get("input")
        if isinstance(arguments, dict):
            return ToolCall(id=call_id, name=name, arguments=arguments)
        return ToolCall(
            id=call_id,
            name=name,
            arguments_raw=json.dumps(arguments),
            arguments_error=(f"input must be a JSON object, got {type(arguments).__name__}"),
        )


def _assistant_blocks(message: AssistantMessage) -> list[dict[str, Any]]:
    # The API rejects empty text blocks.
    blocks: list[dict[str, Any]] = [{"type": "text", "text": message.text}] if message.text else []
    for call in message.tool_calls:
        blocks.append(
            {
                "type": "tool_use",
                "id": call.id,
                "name": call.name,
                "input": call.arguments,
            }
        )
    return blocks


def _tool_result_block(message: ToolResultMessage) -> dict[str, Any]:
    block: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": message.tool_call_id,
        "content": message.content,
    }
    if message.is_error:
        block["is_error"] = True
    return block


def _wire_tool(tool: ToolDefinition) -> dict[str, Any]:
    return {
        "name": tool.name,
        "description": tool.description,
        "input_schema": tool.parameters,
    }


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Usage(_Wire):
    input_tokens: int = 0
    output_tokens: int = 0


class _Message(_Wire):
    model: str | None = None
    content: list[dict[str, Any]]
    stop_reason: str | None = None
    usage: _Usage = _Usage()
