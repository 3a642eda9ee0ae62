"""The neutral message model, the price table and the model-spec resolver."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import ValidationError

from handlers.llm.anthropic import AnthropicModel
from handlers.llm.base import ModelConfigError, resolve_model
from handlers.llm.messages import (
    AssistantMessage,
    ModelRequest,
    ModelResponse,
    SystemMessage,
    ToolCall,
    ToolDefinition,
    ToolResultMessage,
    Usage,
    UserMessage,
)
from handlers.llm.openai import OpenAIModel
from handlers.llm.pricing import PRICES_ENV, Price, PriceTable, PricingError
from tests.llm_servers import ProviderServer, openai_reply

pytestmark = pytest.mark.unit


# --------------------------------------------------------------------------- messages


def test_request_round_trips_through_json() -> None:
    request = ModelRequest(
        messages=[
            SystemMessage(content="sys"),
            UserMessage(content="hi"),
            AssistantMessage(
                text="calling",
                tool_calls=[
                    ToolCall(id="1", name="t", arguments={"a": [1, {"b": None}]}),
                    ToolCall.from_raw_arguments(id="2", name="t", raw="{oops"),
                ],
            ),
            ToolResultMessage(tool_call_id="1", content="out", is_error=True),
        ],
        tools=[ToolDefinition(name="t", parameters={"type": "object"})],
        max_tokens=10,
        temperature=0.5,
    )
    restored = ModelRequest.model_validate_json(request.model_dump_json())
    assert restored == request
    assert isinstance(restored.messages[2], AssistantMessage)
    assert restored.messages[2].tool_calls[1].arguments_error is not None


def test_models_are_frozen_and_collections_are_tuples() -> None:
    message = AssistantMessage(tool_calls=[ToolCall(id="1", name="t")])
    assert isinstance(message.tool_calls, tuple)
    with pytest.raises(ValidationError):
        message.text = "changed"


@pytest.mark.parametrize(
    ("raw", "arguments", "error"),
    [
        ('{"a": 1}', {"a": 1}, None),
        ("", {}, None),
        ("  ", {}, None),
        ("{", {}, "invalid JSON"),
        ('"text"', {}, "got str"),
        ("null", {}, "got NoneType"),
    ],
)
def test_raw_arguments_parsing(raw: str, arguments: dict[str, int], error: str | None) -> None:
    call = ToolCall.from_raw_arguments(id="1", name="t", raw=raw)
    assert call.arguments == arguments
    assert call.arguments_raw == raw
    assert call.arguments_json() == raw
    if error is None:
        assert call.arguments_error is None
    else:
        assert call.arguments_error is not None and error in call.arguments_error


def test_usage_adds_up_and_response_becomes_a_message() -> None:
    total = Usage(input_tokens=1, output_tokens=2) + Usage(input_tokens=10, output_tokens=20)
    assert (total.input_tokens, total.output_tokens, total.total_tokens) == (11, 22, 33)
    call = ToolCall(id="1", name="t")
    response = ModelResponse(text="x", tool_calls=[call], model="m")
    assert response.to_message() == AssistantMessage(text="x", tool_calls=[call])
    assert response.cost_known is False


# --------------------------------------------------------------------------- pricing


def test_price_lookup_prefers_exact_then_longest_prefix() -> None:
    table = PriceTable()
    assert table.lookup("gpt-4o") == Price(input_per_mtok=2.5, output_per_mtok=10)
    assert table.lookup("gpt-4o-mini-2024-07-18") == table.lookup("gpt-4o-mini")
    assert table.lookup("claude-sonnet-4-5-20250929") == table.lookup("claude-sonnet-4-5")
    assert table.lookup("gpt-4o1") is None  # prefixes only match at a "-"
    assert table.cost("mystery", Usage(input_tokens=5)).known is False


def test_price_override_dict_wins() -> None:
    table = PriceTable(overrides={"gpt-4o": {"input": 1.0, "output": 2.0}})
    cost = table.cost("gpt-4o-2024-08-06", Usage(input_tokens=1_000_000, output_tokens=1_000_000))
    assert cost.usd == pytest.approx(3.0)
    assert cost.known


def test_price_override_from_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"house-model": {"input": 0.5, "output_per_mtok": 1.5}}))
    monkeypatch.setenv(PRICES_ENV, str(prices))
    cost = PriceTable().cost("house-model", Usage(input_tokens=2_000_000, output_tokens=2_000_000))
    assert cost.usd == pytest.approx(4.0)
    # Built-in prices are still there.
    assert PriceTable().lookup("gpt-4o") is not None


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '{"m": {"input": -1, "output": 1}}', '{"m": {}}'])
def test_bad_price_file_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str
) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(content)
    monkeypatch.setenv(PRICES_ENV, str(prices))
    with pytest.raises(PricingError):
        PriceTable()


def test_missing_price_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PRICES_ENV, "does-not-exist.json")
    with pytest.raises(PricingError, match="cannot read"):
        PriceTable()


# --------------------------------------------------------------------------- resolver


@pytest.mark.asyncio
async def test_resolve_openai_uses_environment(
    server: ProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    server.script(openai_reply("hello"))
    async with resolve_model("openai:gpt-4o-mini") as model:
        assert isinstance(model, OpenAIModel)
        assert model.name == "openai:gpt-4o-mini"
        assert (await model.complete(ModelRequest(messages=[UserMessage(content="hi")]))).text
    assert server.requests[0].headers["authorization"] == "Bearer sk-env"


@pytest.mark.asyncio
async def test_resolve_anthropic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    async with resolve_model(" Anthropic : claude-haiku-4-5 ") as model:
        assert isinstance(model, AnthropicModel)
        assert model.model == "claude-haiku-4-5"


@pytest.mark.parametrize("spec", ["gpt-4o", "openai:", "", "bedrock:claude"])
def test_resolve_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(ModelConfigError):
        resolve_model(spec)


class _MissingExtra(importlib.abc.MetaPathFinder):
    """Makes importing handlers.llm.local fail the way a missing extra would."""

    def find_spec(
        self, fullname: str, path: object = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == "handlers.llm.local":
            raise ModuleNotFoundError("No module named 'llama_cpp'", name="llama_cpp")
        return None


def test_resolve_local_without_its_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "handlers.llm.local", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_MissingExtra(), *sys.meta_path])
    with pytest.raises(ModelConfigError, match=r"llama_cpp.*make local-model"):
        resolve_model("local:qwen2.5-0.5b")


def test_resolve_local_when_module_is_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "handlers.llm.local", None)
    with pytest.raises(ModelConfigError, match="not available"):
        resolve_model("local:anything")
