"""RetryingModel and FallbackModel over real HTTP to the loopback provider server."""

from __future__ import annotations

import random
import socket

import pytest

from handlers.llm.anthropic import AnthropicModel
from handlers.llm.base import (
    AllModelsFailedError,
    AuthenticationError,
    FallbackModel,
    ModelClient,
    ModelConnectionError,
    ModelError,
    ModelServerError,
    RateLimitedError,
    RetryingModel,
    RetryPolicy,
)
from handlers.llm.messages import ModelRequest, ModelResponse, UserMessage
from handlers.llm.openai import OpenAIModel
from tests.llm_servers import (
    ProviderServer,
    Reply,
    SleepRecorder,
    anthropic_error,
    anthropic_reply,
    openai_error,
    openai_reply,
)

pytestmark = pytest.mark.unit

REQUEST = ModelRequest(messages=[UserMessage(content="hi")])


def openai(server: ProviderServer, timeout: float = 10.0) -> OpenAIModel:
    return OpenAIModel(
        "gpt-4o-mini",
        api_key="sk-test",
        base_url=server.openai_base_url,
        timeout=timeout,
    )


def retrying(inner: ModelClient, sleeps: SleepRecorder, policy: RetryPolicy | None = None) -> RetryingModel:
    return RetryingModel(inner, policy, sleep=sleeps, rng=random.Random(7))


@pytest.mark.asyncio
async def test_429_with_retry_after_then_success(server: ProviderServer, sleeps: SleepRecorder) -> None:
    server.script(
        openai_error(429, "Rate limit reached", type_="requests", headers={"retry-after": "3"}),
        openai_reply("done"),
    )
    async with retrying(openai(server), sleeps) as model:
        response = await model.complete(REQUEST)

    assert response.text == "done"
    assert len(server.requests) == 2
    assert server.requests[0].json == server.requests[1].json
    # Retry-After is a floor: backoff alone would wait at most 0.5s here.
    assert sleeps.delays == [3.0]


@pytest.mark.asyncio
async def test_retry_after_ms_and_anthropic_rate_limit(server: ProviderServer, sleeps: SleepRecorder) -> None:
    server.script(
        anthropic_error(429, "slow down", type_="rate_limit_error", headers={"retry-after": "2"}),
        openai_error(429, "slow down", headers={"retry-after-ms": "1500"}),
        openai_reply("ok"),
        anthropic_reply("ok"),
    )
    anthropic = AnthropicModel("claude-haiku-4-5", api_key="k", base_url=server.url)
    async with retrying(anthropic, sleeps) as a, retrying(openai(server), sleeps) as o:
        with pytest.raises(RateLimitedError) as caught:
            await anthropic.complete(REQUEST)  # bare client: the error carries the hint
        assert caught.value.retry_after == 2.0
        assert (await o.complete(REQUEST)).text == "ok"
        assert (await a.complete(REQUEST)).text == "ok"
    assert sleeps.delays == [1.5]


@pytest.mark.asyncio
async def test_500s_exhaust_retries_then_fallback_answers(
    sleeps: SleepRecorder,
) -> None:
    with ProviderServer() as primary_server, ProviderServer() as fallback_server:
        primary_server.script(*[openai_error(500, "boom", type_="server_error")] * 3)
        fallback_server.script(anthropic_reply("from the fallback", model="claude-haiku-4-5"))
        policy = RetryPolicy(max_attempts=3, base_delay=1.0, max_delay=4.0)
        primary = retrying(openai(primary_server), sleeps, policy)
        fallback = retrying(
            AnthropicModel(
                "claude-haiku-4-5",
                api_key="k",
                base_url=fallback_server.anthropic_base_url,
            ),
            sleeps,
            policy,
        )
        async with FallbackModel(primary, fallback) as model:
            response = await model.complete(REQUEST)

        assert response.text == "from the fallback"
        assert response.model == "claude-haiku-4-5"
        assert len(primary_server.requests) == 3
        assert len(fallback_server.requests) == 1
        # Full jitter within a doubling ceiling: [0, 1] then [0, 2].
        assert len(sleeps.delays) == 2
        assert 0 <= sleeps.delays[0] <= 1.0
        assert 0 <= sleeps.delays[1] <= 2.0
        assert model.name == "openai:gpt-4o-mini -> anthropic:claude-haiku-4-5"


@pytest.mark.asyncio
async def test_every_model_failing_raises_all_models_failed(
    server: ProviderServer, sleeps: SleepRecorder
) -> None:
    server.script(
        openai_error(503, "unavailable"),
        openai_error(503, "unavailable"),
        anthropic_error(401, "bad key", type_="authentication_error"),
    )
    policy = RetryPolicy(max_attempts=2)
    primary = retrying(openai(server), sleeps, policy)
    fallback = retrying(AnthropicModel("claude-haiku-4-5", api_key="k", base_url=server.url), sleeps)
    async with FallbackModel(primary, fallback) as model:
        with pytest.raises(AllModelsFailedError) as caught:
            await model.complete(REQUEST)

    first, second = caught.value.errors
    assert isinstance(first, ModelServerError)
    assert any("gave up after 2 attempts" in note for note in first.__notes__)
    assert isinstance(second, AuthenticationError)
    assert caught.value.retryable is False
    assert len(server.requests) == 3


@pytest.mark.asyncio
async def test_401_is_not_retried(server: ProviderServer, sleeps: SleepRecorder) -> None:
    server.script(openai_error(401, "Incorrect API key provided."), openai_reply("unreached"))
    async with retrying(openai(server), sleeps) as model:
        with pytest.raises(AuthenticationError, match="Incorrect API key provided"):
            await model.complete(REQUEST)
    assert len(server.requests) == 1
    assert sleeps.delays == []
    assert server.pending == 1


@pytest.mark.asyncio
async def test_fallback_can_be_limited_to_some_errors(server: ProviderServer) -> None:
    server.script(openai_error(400, "context too long"), openai_reply("unreached"))
    model = FallbackModel(openai(server), openai(server), should_fall_back=lambda error: error.retryable)
    with pytest.raises(ModelError, match="context too long"):
        await model.complete(REQUEST)
    await model.aclose()
    assert len(server.requests) == 1


@pytest.mark.asyncio
async def test_timeout_is_retried(server: ProviderServer, sleeps: SleepRecorder) -> None:
    server.script(Reply(200, openai_reply("late").body, delay=5.0), openai_reply("on time"))
    async with retrying(openai(server, timeout=0.2), sleeps) as model:
        response = await model.complete(REQUEST)
    assert response.text == "on time"
    assert len(sleeps.delays) == 1


@pytest.mark.asyncio
async def test_retry_after_beyond_total_budget_gives_up_at_once(
    server: ProviderServer, sleeps: SleepRecorder
) -> None:
    server.script(openai_error(429, "quota", headers={"retry-after": "600"}))
    policy = RetryPolicy(max_attempts=5, max_total=60.0)
    async with retrying(openai(server), sleeps, policy) as model:
        with pytest.raises(RateLimitedError) as caught:
            await model.complete(REQUEST)
    assert sleeps.delays == []
    assert any("retry budget" in note for note in caught.value.__notes__)


@pytest.mark.asyncio
async def test_connection_refused_is_retryable(sleeps: SleepRecorder) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # The port is closed again, so nothing listens there.
    inner = OpenAIModel("gpt-4o-mini", api_key="k", base_url=f"http://127.0.0.1:{port}/v1")
    async with retrying(inner, sleeps, RetryPolicy(max_attempts=2)) as model:
        with pytest.raises(ModelConnectionError) as caught:
            await model.complete(REQUEST)
    assert caught.value.retryable
    assert len(sleeps.delays) == 1


class _Failing(ModelClient):
    """Always raises a retryable error; for the pure backoff arithmetic."""

    def __init__(self) -> None:
        self.calls = 0

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.calls += 1
        raise ModelServerError("down")


@pytest.mark.asyncio
async def test_backoff_ceiling_doubles_and_is_capped(sleeps: SleepRecorder) -> None:
    inner = _Failing()
    policy = RetryPolicy(max_attempts=8, base_delay=1.0, max_delay=5.0, max_total=1e9)

    class _Top(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b  # always the ceiling, to check the schedule exactly

    model = RetryingModel(inner, policy, sleep=sleeps, rng=_Top())
    with pytest.raises(ModelServerError):
        await model.complete(REQUEST)
    assert inner.calls == 8
    assert sleeps.delays == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]


def test_retry_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
