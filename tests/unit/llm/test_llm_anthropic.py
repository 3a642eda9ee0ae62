"""Anthropic Messages adapter against a loopback server speaking its wire format."""

from __future__ import annotations

import pytest

from handlers.llm.anthropic import ANTHROPIC_VERSION, AnthropicModel
from handlers.llm.base import (
    AuthenticationError,
    ModelConfigError,
    ModelServerError,
    ModelTimeoutError,
    ResponseFormatError,
)
from handlers.llm.messages import (
    AssistantMessage,
    ModelRequest,
    SystemMessage,
    ToolCall,
    ToolDefinition,
    ToolResultMessage,
    UserMessage,
)
from tests.llm_servers import (
    ANTHROPIC_PATH,
    ProviderServer,
    Reply,
    anthropic_error,
    anthropic_reply,
)

pytestmark = pytest.mark.unit

MODEL = "claude-sonnet-4-5"
SEARCH = ToolDefinition(
    name="search",
    description="Search the web.",
    parameters={
        "type": "object",
        "properties": {"q": {"type": "string"}},
        "required": ["q"],
    },
)


def client(server: ProviderServer, timeout: float = 10.0) -> AnthropicModel:
    return AnthropicModel(
        MODEL,
        api_key="sk-ant-test",
        base_url=server.anthropic_base_url,
        timeout=timeout,
    )


@pytest.mark.asyncio
async def test_text_answer_sends_messages_wire_format(server: ProviderServer) -> None:
    server.script(anthropic_reply("Paris.", input_tokens=1_000_000, output_tokens=100_000))
    request = ModelRequest(
        messages=[
            SystemMessage(content="Be brief."),
            SystemMessage(content="Answer in English."),
            UserMessage(content="Capital of France?"),
        ],
        max_tokens=64,
        temperature=0.0,
    )
    async with client(server) as model:
        response = await model.complete(request)

    assert response.text == "Paris."
    assert response.stop_reason == "end_turn"
    assert response.raw_stop_reason == "end_turn"
    assert response.model == "claude-sonnet-4-5-20250929"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (
        1_000_000,
        100_000,
    )
    # claude-sonnet-4-5: $3 in + $15 out per 1M tokens.
    assert response.cost_usd == pytest.approx(3.0 + 1.5)
    assert response.cost_known

    (sent,) = server.requests
    assert sent.path == ANTHROPIC_PATH
    assert sent.headers["x-api-key"] == "sk-ant-test"
    assert sent.headers["anthropic-version"] == ANTHROPIC_VERSION
    assert "authorization" not in sent.headers
    assert sent.json == {
        "model": MODEL,
        "max_tokens": 64,
        "system": "Be brief.\n\nAnswer in English.",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Capital of France?"}],
            }
        ],
        "temperature": 0.0,
    }


@pytest.mark.asyncio
async def test_single_tool_use(server: ProviderServer) -> None:
    server.script(anthropic_reply("Let me look.", [("toolu_1", "search", {"q": "llama"})]))
    async with client(server) as model:
        response = await model.complete(
            ModelRequest(messages=[UserMessage(content="Find llamas")], tools=[SEARCH])
        )

    assert response.text == "Let me look."
    assert response.stop_reason == "tool_use"
    assert response.tool_calls == (ToolCall(id="toolu_1", name="search", arguments={"q": "llama"}),)
    assert server.requests[0].json["tools"] == [
        {
            "name": "search",
            "description": "Search the web.",
            "input_schema": SEARCH.parameters,
        }
    ]


@pytest.mark.asyncio
async def test_parallel_tool_uses_and_results_in_one_user_turn(
    server: ProviderServer,
) -> None:
    server.script(
        anthropic_reply(
            None,
            [
                ("toolu_a", "search", {"q": "alpacas"}),
                ("toolu_b", "search", {"q": "vicuñas"}),
            ],
        ),
        anthropic_reply("Both are camelids."),
    )
    question = UserMessage(content="Compare alpacas and vicuñas")
    async with client(server) as model:
        first = await model.complete(ModelRequest(messages=[question], tools=[SEARCH]))
        assert {c.id: c.arguments["q"] for c in first.tool_calls} == {
            "toolu_a": "alpacas",
            "toolu_b": "vicuñas",
        }
        second = await model.complete(
            ModelRequest(
                messages=[
                    question,
                    first.to_message(),
                    ToolResultMessage(tool_call_id="toolu_b", content="rate limited", is_error=True),
                    ToolResultMessage(tool_call_id="toolu_a", content="Alpacas are domestic."),
                    UserMessage(content="Keep it short."),
                ],
                tools=[SEARCH],
            )
        )

    assert second.text == "Both are camelids."
    assert server.requests[1].json["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Compare alpacas and vicuñas"}],
        },
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_a",
                    "name": "search",
                    "input": {"q": "alpacas"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_b",
                    "name": "search",
                    "input": {"q": "vicuñas"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_b",
                    "content": "rate limited",
                    "is_error": True,
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_a",
                    "content": "Alpacas are domestic.",
                },
                {"type": "text", "text": "Keep it short."},
            ],
        },
    ]


@pytest.mark.asyncio
async def test_non_object_input_surfaces_as_arguments_error(
    server: ProviderServer,
) -> None:
    server.script(anthropic_reply(None, [("toolu_1", "search", "q=llama")]))
    async with client(server) as model:
        response = await model.complete(ModelRequest(messages=[UserMessage(content="hi")]))

    (call,) = response.tool_calls
    assert call.arguments == {}
    assert call.arguments_raw == '"q=llama"'
    assert call.arguments_error is not None and "JSON object" in call.arguments_error


@pytest.mark.asyncio
async def test_errors_map_to_the_tree(server: ProviderServer) -> None:
    server.script(
        anthropic_error(401, "invalid x-api-key", type_="authentication_error"),
        anthropic_error(529, "Overloaded", type_="overloaded_error"),
        Reply(200, "<html>gateway</html>"),
        Reply(200, anthropic_reply("late").body, delay=5.0),
    )
    request = ModelRequest(messages=[UserMessage(content="hi")])
    async with client(server, timeout=0.2) as model:
        with pytest.raises(AuthenticationError, match="authentication_error: invalid x-api-key"):
            await model.complete(request)
        with pytest.raises(ModelServerError) as overloaded:
            await model.complete(request)
        assert overloaded.value.retryable and overloaded.value.status_code == 529
        with pytest.raises(ResponseFormatError, match="not JSON"):
            await model.complete(request)
        with pytest.raises(ModelTimeoutError):
            await model.complete(request)


def test_public_api_needs_a_key() -> None:
    with pytest.raises(ModelConfigError, match="ANTHROPIC_API_KEY"):
        AnthropicModel(MODEL, base_url="https://api.anthropic.com")


def test_empty_assistant_text_is_not_sent() -> None:
    body = AnthropicModel(MODEL, api_key="k", base_url="http://127.0.0.1:9").request_body(
        ModelRequest(
            messages=[
                UserMessage(content="hi"),
                AssistantMessage(text="", tool_calls=[ToolCall(id="t", name="search")]),
                ToolResultMessage(tool_call_id="t", content="none"),
            ]
        )
    )
    assert body["messages"][1]["content"] == [{"type": "tool_use", "id": "t", "name": "search", "input": {}}]
