"""Model clients spread concurrent calls over small connection pools."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from handlers.llm.messages import ModelRequest, UserMessage
from handlers.llm.openai import OpenAIModel

pytestmark = pytest.mark.unit


class _Held(httpx.AsyncBaseTransport):
    """Answers every chat completion once the test lets go; counts calls in flight."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.in_flight = 0
        self.peak = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await self.release.wait()
        self.in_flight -= 1
        body: dict[str, Any] = {
            "id": "x",
            "model": "m",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        return httpx.Response(
            200, content=json.dumps(body).encode(), headers={"content-type": "application/json"}
        )


async def test_a_hundred_concurrent_calls_use_pools_of_32_and_all_run_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    transport = _Held()
    real = httpx.AsyncClient

    def client(**kwargs: Any) -> httpx.AsyncClient:
        assert kwargs["limits"].max_connections == 32
        return real(transport=transport, timeout=kwargs["timeout"])

    monkeypatch.setattr(httpx, "AsyncClient", client)
    model = OpenAIModel("m", api_key="k", base_url="http://127.0.0.1:9/v1")
    request = ModelRequest(messages=[UserMessage(content="hi")], tools=[])
    calls = [asyncio.create_task(model.complete(request)) for _ in range(100)]
    for _ in range(5000):
        if transport.in_flight == 100:
            break
        await asyncio.sleep(0.001)
    assert len(model._pools) == 4, "100 calls in flight over pools of 32"
    transport.release.set()
    answers = await asyncio.gather(*calls)
    assert [a.text for a in answers] == ["ok"] * 100
    assert transport.peak == 100, "no pool limit held a call back"
    await model.aclose()
    assert model._pools == []
