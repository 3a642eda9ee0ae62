"""Model rate limits on a fake clock: buckets, limits from control events, Retry-After pauses.

Nothing sleeps for real: the limiter's sleep advances the fake clock and records the wait."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from handlers.llm.base import FallbackModel, ModelClient, RateLimitedError, RetryingModel, RetryPolicy
from handlers.llm.messages import ModelRequest, ModelResponse, Usage, UserMessage
from handlers.rate_limits import (
    MAX_PAUSE_S,
    ModelRateLimiter,
    RateLimitedModel,
    TokenBucket,
    estimate_tokens,
)
from projections.control import ALL_TENANTS, CONTROL_RUN_ID, ControlState
from streams.envelope import root_meta
from streams.events import RateLimitSet

pytestmark = pytest.mark.unit

REQUEST = ModelRequest(messages=[UserMessage(content="x" * 400)], max_tokens=100)  # ~ 130 tokens


class FakeClock:
    """A clock that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []
        self.on_sleep: Callable[[], None] | None = None

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep()


def limit(provider: str, rpm: int | None, tpm: int | None = None) -> RateLimitSet:
    return RateLimitSet(
        meta=root_meta(CONTROL_RUN_ID, ALL_TENANTS, "test"),
        provider=provider,
        requests_per_minute=rpm,
        tokens_per_minute=tpm,
        by="ops",
    )


def limiter_with(*events: RateLimitSet) -> tuple[ModelRateLimiter, ControlState, FakeClock]:
    state, clock = ControlState(), FakeClock()
    for event in events:
        state.apply(event)
    return ModelRateLimiter(state, clock=clock, sleep=clock.sleep), state, clock


def test_a_bucket_holds_a_minute_and_refills_evenly() -> None:
    bucket = TokenBucket(60, now=0.0)
    for _ in range(60):
        assert bucket.wait(1, 0.0) == 0
        bucket.take(1, 0.0)
    assert bucket.wait(1, 0.0) == pytest.approx(1.0)
    assert bucket.wait(1, 0.5) == pytest.approx(0.5)
    assert bucket.wait(1000, 0.5) == pytest.approx(59.5)  # more than it holds: a full bucket
    bucket.take(30, 60.0)  # refilled to 60 by now, 30 left
    bucket.set_rate(10, 60.0)
    assert bucket.level == 10
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(0, now=0.0)


async def test_requests_per_minute_spaces_calls_out() -> None:
    limiter, _, clock = limiter_with(limit("openai", 2))
    for _ in range(3):
        await limiter.acquire("openai:gpt-4o-mini", 10)
    assert sum(clock.slept) == pytest.approx(30.0)  # two at once, the third after 60/2 s
    await limiter.acquire("anthropic:claude", 10)  # another provider is not limited
    assert sum(clock.slept) == pytest.approx(30.0)


async def test_a_model_spec_has_a_limit_of_its_own_beside_its_providers() -> None:
    limiter, _, clock = limiter_with(limit("openai:gpt-4o", 1), limit("openai", 100))
    await limiter.acquire("openai:gpt-4o", 1)
    await limiter.acquire("openai:gpt-4o-mini", 1)  # only the provider's limit applies
    assert clock.slept == []
    await limiter.acquire("openai:gpt-4o", 1)
    assert sum(clock.slept) == pytest.approx(60.0)
    assert limiter.limit("openai:gpt-4o") == (1, None)


async def test_tokens_per_minute_counts_estimates_then_real_usage() -> None:
    limiter, _, clock = limiter_with(limit("openai", None, 1000))
    await limiter.acquire("openai:m", 600)
    assert limiter.delay("openai:m", 600) == pytest.approx(12.0)  # 200 missing at 1000/min
    limiter.settle("openai:m", estimated=600, used=100)  # it used far less: 500 back
    assert limiter.delay("openai:m", 600) == 0
    limiter.settle("openai:m", estimated=0, used=1500)  # a call that used more: in debt
    assert limiter.delay("openai:m", 100) == pytest.approx(42.0)  # 900 - 1500 = -600; 700 missing
    assert clock.slept == []


async def test_a_changed_limit_reaches_a_call_that_is_already_waiting() -> None:
    limiter, state, clock = limiter_with(limit("openai", 1))
    await limiter.acquire("openai:m", 1)
    clock.on_sleep = lambda: state.apply(limit("openai", 6000))
    await limiter.acquire("openai:m", 1)  # would wait 60 s at 1/min
    assert clock.slept[0] == limiter.nap_s  # it napped once, saw the new limit, went soon after
    assert sum(clock.slept) < 2 * limiter.nap_s
    state.apply(limit("openai", None, None))  # lifted
    for _ in range(100):
        await limiter.acquire("openai:m", 1)
    assert sum(clock.slept) < 2 * limiter.nap_s
    assert limiter.limit("openai") == (None, None)


class Throttled(ModelClient):
    """Answers 429 with a Retry-After the first `failures` times, then answers."""

    def __init__(self, failures: int, retry_after: float | None) -> None:
        self.failures = failures
        self.retry_after = retry_after
        self.calls = 0

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.calls += 1
        if self.calls <= self.failures:
            raise RateLimitedError(
                "slow down", provider="openai", status_code=429, retry_after=self.retry_after
            )
        return ModelResponse(text="ok", model="m", usage=Usage(input_tokens=100, output_tokens=30))


async def test_a_retry_after_pauses_the_provider_for_every_call() -> None:
    limiter, _, clock = limiter_with()
    throttled = RateLimitedModel(Throttled(1, retry_after=7.0), limiter, "openai:gpt-4o")
    with pytest.raises(RateLimitedError):
        await throttled.complete(REQUEST)
    assert limiter.paused_for("openai:gpt-4o-mini") == pytest.approx(7.0)
    # Another model of the same provider, called by someone else, is told to wait without
    # reaching the provider ...
    provider = Throttled(0, None)
    other = RateLimitedModel(provider, limiter, "openai:gpt-4o-mini")
    with pytest.raises(RateLimitedError) as caught:
        await other.complete(REQUEST)
    assert caught.value.retry_after == pytest.approx(7.0) and provider.calls == 0
    # ... so the retrying client around it waits the pause out, then calls once.
    retrying = RetryingModel(other, RetryPolicy(max_attempts=2), sleep=clock.sleep, clock=clock)
    assert (await retrying.complete(REQUEST)).text == "ok"
    assert provider.calls == 1 and sum(clock.slept) >= 7.0
    # Another provider never was paused.
    assert limiter.paused_for("anthropic:claude") == 0


async def test_a_pause_longer_than_the_retry_budget_gives_up_so_a_fallback_can_answer() -> None:
    limiter, _, clock = limiter_with()
    limiter.pause("openai:m", 500.0)
    primary = RetryingModel(
        RateLimitedModel(Throttled(0, None), limiter, "openai:m"), sleep=clock.sleep, clock=clock
    )
    fallback = RateLimitedModel(Throttled(0, None), limiter, "anthropic:m")
    assert (await FallbackModel(primary, fallback).complete(REQUEST)).text == "ok"
    assert clock.slept == []  # 500 s is beyond the 120 s retry budget: no wait at all


async def test_a_429_without_retry_after_pauses_nothing_and_a_huge_one_is_capped() -> None:
    limiter, _, clock = limiter_with()
    with pytest.raises(RateLimitedError):
        await RateLimitedModel(Throttled(1, retry_after=None), limiter, "openai:m").complete(REQUEST)
    assert limiter.paused_for("openai:m") == 0
    with pytest.raises(RateLimitedError):
        await RateLimitedModel(Throttled(1, retry_after=86_400.0), limiter, "openai:m").complete(REQUEST)
    assert limiter.paused_for("openai:m") == pytest.approx(MAX_PAUSE_S)
    assert clock.slept == []


async def test_a_limited_call_is_settled_with_its_real_usage() -> None:
    limiter, _, _ = limiter_with(limit("openai", None, 10_000))
    model = RateLimitedModel(Throttled(0, None), limiter, "openai:m")
    await model.complete(REQUEST)
    assert limiter.delay("openai:m", 9_870) == 0  # 130 used (100 + 30), not the estimate
    assert estimate_tokens(REQUEST) > 130
    assert model.name == "Throttled"
