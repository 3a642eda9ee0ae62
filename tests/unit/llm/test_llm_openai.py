"""OpenAI Chat Completions adapter against a loopback server speaking its wire format."""

from __future__ import annotations

import pytest

from handlers.llm.base import AuthenticationError, ModelConfigError, ModelTimeoutError
from handlers.llm.messages import (
    AssistantMessage,
    ModelRequest,
    SystemMessage,
    ToolCall,
    ToolDefinition,
    ToolResultMessage,
    UserMessage,
)
from handlers.llm.openai import DEFAULT_OPENAI_BASE_URL, OpenAIModel
from handlers.llm.pricing import Price, PriceTable
from tests.llm_servers import (
    OPENAI_PATH,
    ProviderServer,
    Reply,
    openai_error,
    openai_reply,
)

pytestmark = pytest.mark.unit

WEATHER = ToolDefinition(
    name="get_weather",
    description="Current weather for a city.",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
)


def client(
    server: ProviderServer,
    model: str = "gpt-4o-mini",
    *,
    timeout: float = 10.0,
    prices: PriceTable | None = None,
) -> OpenAIModel:
    return OpenAIModel(
        model,
        api_key="sk-test",
        base_url=server.openai_base_url,
        timeout=timeout,
        prices=prices,
    )


@pytest.mark.asyncio
async def test_text_answer_sends_chat_completions_wire_format(
    server: ProviderServer,
) -> None:
    server.script(openai_reply("Paris.", prompt_tokens=20, completion_tokens=3))
    request = ModelRequest(
        messages=[
            SystemMessage(content="Be brief."),
            UserMessage(content="Capital of France?"),
        ],
        max_tokens=64,
        temperature=0.2,
    )
    async with client(server) as model:
        response = await model.complete(request)

    assert response.text == "Paris."
    assert response.tool_calls == ()
    assert response.stop_reason == "end_turn"
    assert response.model == "gpt-4o-mini-2024-07-18"
    (sent,) = server.requests
    assert sent.path == OPENAI_PATH
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert sent.json == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"},
        ],
        # A compatible endpoint gets max_tokens (see OpenAIModel.request_body).
        "max_tokens": 64,
        "temperature": 0.2,
    }


@pytest.mark.asyncio
async def test_usage_and_cost_are_reported(server: ProviderServer) -> None:
    server.script(openai_reply("ok", prompt_tokens=1_000_000, completion_tokens=500_000))
    async with client(server) as model:
        response = await model.complete(ModelRequest(messages=[UserMessage(content="hi")]))

    assert response.usage.input_tokens == 1_000_000
    assert response.usage.output_tokens == 500_000
    # gpt-4o-mini list price: $0.15 in + $0.60 out per 1M tokens; the dated snapshot
    # the server reports is priced by its family.
    assert response.cost_usd == pytest.approx(0.15 + 0.30)
    assert response.cost_known


@pytest.mark.asyncio
async def test_unknown_model_costs_zero_and_says_so(server: ProviderServer) -> None:
    server.script(openai_reply("ok", model="my-finetune"))
    async with client(server, model="my-finetune") as model:
        response = await model.complete(ModelRequest(messages=[UserMessage(content="hi")]))

    assert response.cost_usd == 0.0
    assert response.cost_known is False


@pytest.mark.asyncio
async def test_price_override_is_used(server: ProviderServer) -> None:
    server.script(openai_reply("ok", model="my-finetune", prompt_tokens=2_000_000))
    prices = PriceTable(overrides={"my-finetune": Price(input_per_mtok=1.0, output_per_mtok=0)})
    async with client(server, model="my-finetune", prices=prices) as model:
        response = await model.complete(ModelRequest(messages=[UserMessage(content="hi")]))

    assert response.cost_usd == pytest.approx(2.0)
    assert response.cost_known


@pytest.mark.asyncio
async def test_single_tool_call(server: ProviderServer) -> None:
    server.script(openai_reply(None, [("call_1", "get_weather", {"city": "Oslo"})]))
    request = ModelRequest(messages=[UserMessage(content="Weather in Oslo?")], tools=[WEATHER])
    async with client(server) as model:
        response = await model.complete(request)

    assert response.stop_reason == "tool_use"
    assert response.text == ""
    assert response.tool_calls == (
        ToolCall(
            id="call_1",
            name="get_weather",
            arguments={"city": "Oslo"},
            arguments_raw='{"city": "Oslo"}',
        ),
    )
    assert server.requests[0].json["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city.",
                "parameters": WEATHER.parameters,
            },
        }
    ]


@pytest.mark.asyncio
async def test_parallel_tool_calls_round_trip_by_id(server: ProviderServer) -> None:
    server.script(
        openai_reply(
            "Checking both.",
            [
                ("call_a", "get_weather", {"city": "Oslo"}),
                ("call_b", "get_weather", {"city": "Lima"}),
            ],
        ),
        openai_reply("Oslo 3C, Lima unavailable."),
    )
    question = UserMessage(content="Weather in Oslo and Lima?")
    async with client(server) as model:
        first = await model.complete(ModelRequest(messages=[question], tools=[WEATHER]))
        by_id = {call.id: call.arguments["city"] for call in first.tool_calls}
        assert by_id == {"call_a": "Oslo", "call_b": "Lima"}

        # Results come back in completion order, not call order; ids correlate them.
        follow_up = ModelRequest(
            messages=[
                question,
                first.to_message(),
                ToolResultMessage(tool_call_id="call_b", content="timeout", is_error=True),
                ToolResultMessage(tool_call_id="call_a", content="3C"),
            ],
            tools=[WEATHER],
        )
        second = await model.complete(follow_up)

    assert second.text == "Oslo 3C, Lima unavailable."
    assert server.requests[1].json["messages"][1:] == [
        {
            "role": "assistant",
            "content": "Checking both.",
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": '{"city": "Oslo"}',
                    },
                },
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": '{"city": "Lima"}',
                    },
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_b", "content": "[tool error] timeout"},
        {"role": "tool", "tool_call_id": "call_a", "content": "3C"},
    ]


@pytest.mark.asyncio
async def test_malformed_arguments_surface_as_arguments_error(
    server: ProviderServer,
) -> None:
    broken = '{"city": "Oslo"'
    server.script(
        openai_reply(
            None,
            [("call_1", "get_weather", broken), ("call_2", "get_weather", "[1, 2]")],
        ),
        openai_reply("fixed"),
    )
    async with client(server) as model:
        response = await model.complete(ModelRequest(messages=[UserMessage(content="hi")], tools=[WEATHER]))
        bad, not_object = response.tool_calls
        assert bad.arguments_error is not None and "invalid JSON" in bad.arguments_error
        assert bad.arguments_raw == broken
        assert bad.arguments == {}
        assert not bad.arguments_valid
        assert not_object.arguments_error is not None
        assert "JSON object" in not_object.arguments_error

        # The repair round shows the model exactly what it sent.
        await model.complete(
            ModelRequest(
                messages=[
                    UserMessage(content="hi"),
                    AssistantMessage(tool_calls=[bad]),
                    ToolResultMessage(
                        tool_call_id="call_1",
                        content=bad.arguments_error,
                        is_error=True,
                    ),
                ]
            )
        )
    assistant = server.requests[1].json["messages"][1]
    assert assistant["content"] is None
    assert assistant["tool_calls"][0]["function"]["arguments"] == broken


@pytest.mark.asyncio
async def test_401_is_a_clear_non_retryable_error(server: ProviderServer) -> None:
    server.script(openai_error(401, "Incorrect API key provided.", type_="invalid_api_key"))
    async with client(server) as model:
        with pytest.raises(AuthenticationError) as caught:
            await model.complete(ModelRequest(messages=[UserMessage(content="hi")]))

    error = caught.value
    assert error.retryable is False
    assert error.status_code == 401
    assert "Incorrect API key provided." in str(error)
    assert "sk-test" not in str(error)


@pytest.mark.asyncio
async def test_timeout_is_a_retryable_error(server: ProviderServer) -> None:
    server.script(Reply(200, openai_reply("late").body, delay=5.0))
    async with client(server, timeout=0.2) as model:
        with pytest.raises(ModelTimeoutError) as caught:
            await model.complete(ModelRequest(messages=[UserMessage(content="hi")]))
    assert caught.value.retryable


def test_public_api_needs_a_key_and_uses_max_completion_tokens() -> None:
    with pytest.raises(ModelConfigError, match="OPENAI_API_KEY"):
        OpenAIModel("gpt-4o", base_url=DEFAULT_OPENAI_BASE_URL)

    body = OpenAIModel("o3", api_key="sk-test", base_url=DEFAULT_OPENAI_BASE_URL).request_body(
        ModelRequest(messages=[UserMessage(content="hi")], max_tokens=99)
    )
    assert body["max_completion_tokens"] == 99
    assert "max_tokens" not in body
    assert "temperature" not in body


@pytest.mark.asyncio
async def test_compatible_endpoint_without_key_sends_no_authorization(
    server: ProviderServer,
) -> None:
    server.script(openai_reply("hi"))
    async with OpenAIModel("llama", api_key="", base_url=server.openai_base_url) as model:
        await model.complete(ModelRequest(messages=[UserMessage(content="hi")]))
    assert "authorization" not in server.requests[0].headers
