"""Model rate limits: token buckets per provider and per model spec, paused by a provider's 429.

Every model call of a process passes through one `ModelRateLimiter`. Before a call it
waits until the buckets of the call's provider (`openai`) and model spec
(`openai:gpt-4o-mini`) have room for one request and for its estimated tokens; after the
call the estimate is corrected by the usage the provider reported. The limits come from
the control state (`RateLimitSet` events), read on every call, so a changed limit applies
within one nap (at most a second) even to calls already waiting.

A provider that answers HTTP 429 with a Retry-After pauses that provider for every call
of the process, not only the one that was throttled: until the pause ends, a call to it
fails at once with a `RateLimitedError` carrying the rest of the pause as its
`retry_after`, without reaching the provider. The `RetryingModel` around it then waits
and retries within its policy (and a `FallbackModel` moves on when that gives up), just
as if the provider itself had answered 429.

Each process enforces a limit on its own calls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from handlers.llm.base import ModelClient, RateLimitedError, RetryingModel, resolve_model
from handlers.llm.messages import ModelRequest, ModelResponse
from projections.control import ControlState, RateLimit

__all__ = ["ModelRateLimiter", "RateLimitedModel", "TokenBucket", "rate_limited_models"]

MAX_PAUSE_S = 600.0
"""The longest pause a provider's Retry-After can impose; longer asks are cut to this."""
MIN_NAP_S = 0.001
_EPSILON = 1e-9  # refill arithmetic leaves crumbs; a wait for one must not spin


class TokenBucket:
    """A bucket that refills at `per_minute` tokens a minute and holds one minute's worth.

    Taking more than is there (usage reported after a call can exceed its estimate) leaves
    it below zero, and later takers wait for the debt to be refilled.
    """

    def __init__(self, per_minute: float, now: float) -> None:
        if per_minute <= 0:
            raise ValueError(f"a rate must be positive: {per_minute}")
        self.per_minute = float(per_minute)
        self.level = self.per_minute
        self._updated = now

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._updated)
        self.level = min(self.per_minute, self.level + elapsed * self.per_minute / 60.0)
        self._updated = now

    def wait(self, amount: float, now: float) -> float:
        """Seconds until `amount` can be taken (0 when it can be now). An amount larger
        than the bucket holds waits for a full bucket."""
        self._refill(now)
        missing = min(amount, self.per_minute) - self.level
        return 0.0 if missing <= _EPSILON else missing * 60.0 / self.per_minute

    def take(self, amount: float, now: float) -> None:
        self._refill(now)
        self.level = min(self.per_minute, self.level - amount)

    def set_rate(self, per_minute: float, now: float) -> None:
        """Change the rate, keeping what is in the bucket (up to the new size)."""
        if per_minute <= 0:
            raise ValueError(f"a rate must be positive: {per_minute}")
        self._refill(now)
        self.per_minute = float(per_minute)
        self.level = min(self.level, self.per_minute)


class _Gate:
    """The buckets and pause of one provider or model spec."""

    def __init__(self) -> None:
        self.limit: tuple[int | None, int | None] = (None, None)
        self.requests: TokenBucket | None = None
        self.tokens: TokenBucket | None = None
        self.paused_until = 0.0

    def configure(self, limit: RateLimit | None, now: float) -> None:
        wanted = (limit.requests_per_minute, limit.tokens_per_minute) if limit else (None, None)
        if wanted == self.limit:
            return
        self.limit = wanted
        self.requests = _bucket(self.requests, wanted[0], now)
        self.tokens = _bucket(self.tokens, wanted[1], now)

    def wait(self, tokens: int, now: float) -> float:
        waits = [0.0]
        if self.requests is not None:
            waits.append(self.requests.wait(1, now))
        if self.tokens is not None:
            waits.append(self.tokens.wait(tokens, now))
        return max(waits)

    def take(self, tokens: int, now: float) -> None:
        if self.requests is not None:
            self.requests.take(1, now)
        if self.tokens is not None:
            self.tokens.take(tokens, now)


def _bucket(bucket: TokenBucket | None, per_minute: int | None, now: float) -> TokenBucket | None:
    if per_minute is None:
        return None
    if bucket is None:
        return TokenBucket(per_minute, now)
    bucket.set_rate(per_minute, now)
    return bucket


def _keys(spec: str) -> tuple[str, ...]:
    """The limit names a call of `spec` counts against: its provider, then the spec."""
    provider = spec.partition(":")[0].strip().lower()
    return (provider, spec) if spec != provider else (provider,)


class ModelRateLimiter:
    """Admits the model calls of one process within the limits of the control state.

    `clock` and `sleep` are injectable for tests; a waiting call sleeps at most `nap_s` at
    a time and then looks at the limits again, so a lifted limit frees it promptly.
    """

    def __init__(
        self,
        control: ControlState | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        nap_s: float = 1.0,
    ) -> None:
        self.control = control or ControlState()
        self._clock = clock
        self._sleep = sleep
        self.nap_s = nap_s
        self._gates: dict[str, _Gate] = {}

    def _gate(self, key: str, now: float) -> _Gate:
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = _Gate()
        gate.configure(self.control.rate_limit(key), now)
        return gate

    def limit(self, key: str) -> tuple[int | None, int | None]:
        """The (requests, tokens) per minute this limiter enforces for a provider or spec."""
        return self._gate(key, self._clock()).limit

    def delay(self, spec: str, tokens: int = 0) -> float:
        """Seconds a call of `spec` with `tokens` estimated tokens would wait for its
        buckets now (a pause is not a wait: see `paused_for`)."""
        now = self._clock()
        return max(self._gate(key, now).wait(tokens, now) for key in _keys(spec))

    async def acquire(self, spec: str, tokens: int) -> None:
        """Wait until a call of `spec` with `tokens` estimated tokens fits, then count it."""
        while True:
            now = self._clock()
            gates = [self._gate(key, now) for key in _keys(spec)]
            wait = max(gate.wait(tokens, now) for gate in gates)
            if wait <= 0:
                for gate in gates:
                    gate.take(tokens, now)
                return
            await self._sleep(max(MIN_NAP_S, min(wait, self.nap_s)))

    def settle(self, spec: str, estimated: int, used: int) -> None:
        """Correct a call's token count once its real usage is known."""
        now = self._clock()
        for key in _keys(spec):
            gate = self._gate(key, now)
            if gate.tokens is not None:
                gate.tokens.take(used - estimated, now)

    def pause(self, spec: str, seconds: float) -> None:
        """Start no call to the provider of `spec` for `seconds` (a Retry-After)."""
        gate = self._gate(_keys(spec)[0], self._clock())
        gate.paused_until = max(gate.paused_until, self._clock() + min(max(seconds, 0.0), MAX_PAUSE_S))

    def paused_for(self, spec: str) -> float:
        """Seconds left of a pause of the provider of `spec` (0 when it is not paused)."""
        now = self._clock()
        return max(0.0, self._gate(_keys(spec)[0], now).paused_until - now)


def estimate_tokens(request: ModelRequest) -> int:
    """Tokens a request may use: about four characters a token in, plus the most it may write."""
    chars = sum(len(m.model_dump_json()) for m in request.messages)
    chars += sum(len(t.model_dump_json()) for t in request.tools)
    return chars // 4 + request.max_tokens


class RateLimitedModel(ModelClient):
    """A model client whose every call is admitted by a `ModelRateLimiter` first."""

    def __init__(self, inner: ModelClient, limiter: ModelRateLimiter, spec: str) -> None:
        self.inner = inner
        self.limiter = limiter
        self.spec = spec

    @property
    def name(self) -> str:
        """The inner client's name."""
        return self.inner.name

    def _check_pause(self) -> None:
        if paused := self.limiter.paused_for(self.spec):
            raise RateLimitedError(
                f"{self.spec}: the provider asked every caller to wait; {paused:.1f}s left",
                provider=self.spec.partition(":")[0],
                status_code=429,
                retry_after=paused,
            )

    async def complete(self, request: ModelRequest) -> ModelResponse:
        estimated = estimate_tokens(request)
        self._check_pause()
        await self.limiter.acquire(self.spec, estimated)
        self._check_pause()  # a pause may have begun while this call waited for its bucket
        try:
            response = await self.inner.complete(request)
        except RateLimitedError as error:
            if error.retry_after is not None:
                self.limiter.pause(self.spec, error.retry_after)
            raise
        self.limiter.settle(self.spec, estimated, response.usage.total_tokens)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def rate_limited_models(
    limiter: ModelRateLimiter, models: Callable[[str], ModelClient] | None = None
) -> Callable[[str], ModelClient]:
    """A model factory whose clients pass `limiter`.

    Without `models`: each provider client is limited and then retried with backoff, so
    every attempt is admitted and every 429 is seen. With `models` (a factory of its own,
    which may retry inside): its clients are limited as a whole.
    """
    if models is None:
        return lambda spec: RetryingModel(RateLimitedModel(resolve_model(spec), limiter, spec))
    factory = models
    return lambda spec: RateLimitedModel(factory(spec), limiter, spec)
