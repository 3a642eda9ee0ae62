"""HTTP plumbing shared by the adapters: a POST whose failures become ModelErrors."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from handlers.llm.base import (
    ModelClient,
    ModelConnectionError,
    ModelTimeoutError,
    ResponseFormatError,
    error_for_status,
)
from handlers.llm.messages import Usage
from handlers.llm.pricing import Cost, PriceTable

_MAX_ERROR_TEXT = 500
_CALLS_PER_POOL = 32

_W = TypeVar("_W", bound=BaseModel)


class HttpModelClient(ModelClient):
    """Shared state of the HTTP adapters: one connection pool, a timeout, a price table.

    An ``http_client`` passed in stays owned by the caller and is not closed by
    :meth:`aclose`.
    """

    provider: str = "http"

    def __init__(
        self,
        model: str,
        *,
        timeout: float,
        prices: PriceTable | None,
        http_client: httpx.AsyncClient | None,
    ) -> None:
        self.model = model
        self.prices = prices if prices is not None else PriceTable()
        self._owns_client = http_client is None
        self._timeout = timeout
        self._pools: list[httpx.AsyncClient] = [http_client] if http_client is not None else []
        self._busy: list[int] = [0] * len(self._pools)

    @property
    def name(self) -> str:
        """``"<provider>:<model>"``."""
        return f"{self.provider}:{self.model}"

    def cost(self, model: str, usage: Usage) -> Cost:
        """Price ``usage`` for the model that answered."""
        return self.prices.cost(model or self.model, usage)

    async def _post(self, url: str, body: Mapping[str, Any], headers: Mapping[str, str]) -> dict[str, Any]:
        """POST through the connection pool with the fewest calls in flight.

        Several small pools rather than one large one: httpcore walks its whole pool on
        every request and response, so one pool serving hundreds of concurrent calls spent
        most of a worker's CPU there. How many calls run at once is the model slots' call
        (AGENTSTREAM_MODEL_SLOTS), not a pool limit's."""
        index = min(range(len(self._pools)), key=self._busy.__getitem__, default=-1)
        if index < 0 or (self._owns_client and self._busy[index] >= _CALLS_PER_POOL):
            self._pools.append(
                httpx.AsyncClient(
                    timeout=httpx.Timeout(self._timeout),
                    limits=httpx.Limits(max_connections=_CALLS_PER_POOL),
                )
            )
            self._busy.append(0)
            index = len(self._pools) - 1
        self._busy[index] += 1
        try:
            return await post_json(
                self._pools[index], url, body=body, headers=headers, provider=self.provider
            )
        finally:
            self._busy[index] -= 1

    async def aclose(self) -> None:
        """Close the connection pools this client created."""
        if self._owns_client:
            for pool in self._pools:
                await pool.aclose()
            self._pools.clear()
            self._busy.clear()


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms`` or ``retry-after``)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_message(response: httpx.Response) -> str:
    """The provider's error message (OpenAI and Anthropic both nest it in ``error``)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            kind = err.get("type") or err.get("code")
            return f"{kind}: {err['message']}" if kind else err["message"]
        if isinstance(err, str):
            return err
    text = response.text.strip() or response.reason_phrase
    return text[:_MAX_ERROR_TEXT]


async def post_json(
    client: httpx.AsyncClient,
    url: str,
    *,
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    provider: str,
) -> dict[str, Any]:
    """POST ``body`` as JSON and return the decoded object, or raise a ModelError."""
    try:
        response = await client.post(url, json=body, headers=dict(headers))
    except httpx.TimeoutException as exc:
        raise ModelTimeoutError(
            f"no answer from {url} within the timeout ({type(exc).__name__})",
            provider=provider,
        ) from exc
    except httpx.TransportError as exc:
        raise ModelConnectionError(
            f"cannot reach {url}: {type(exc).__name__}: {exc}", provider=provider
        ) from exc
    if response.status_code >= 400:
        raise error_for_status(
            response.status_code,
            error_message(response),
            provider=provider,
            retry_after=parse_retry_after(response.headers),
        )
    try:
        data = response.json()
    except ValueError as exc:
        raise ResponseFormatError(
            f"response is not JSON: {response.text[:_MAX_ERROR_TEXT]!r}",
            provider=provider,
            status_code=response.status_code,
        ) from exc
    if not isinstance(data, dict):
        raise ResponseFormatError(
            "response JSON is not an object",
            provider=provider,
            status_code=response.status_code,
        )
    return data


def parse_wire(wire_type: type[_W], data: dict[str, Any], provider: str) -> _W:
    """Validate a provider response body, or raise ResponseFormatError."""
    try:
        return wire_type.model_validate(data)
    except ValidationError as exc:
        raise ResponseFormatError(f"unexpected response shape: {exc}", provider=provider) from exc


__all__ = [
    "HttpModelClient",
    "error_message",
    "parse_retry_after",
    "parse_wire",
    "post_json",
]
