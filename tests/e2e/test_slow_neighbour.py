"""No run waits for another: runs whose model answers at once complete while another
run's model call is still outstanding, on every log backend, over the real OpenAI wire
format on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentstream.config import Settings
from agentstream.runtime import AgentRuntime, Task
from tests.support.backends import Backend
from tests.support.scripted_provider import ConversationalProvider

QUICK_RUNS = 10


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[ConversationalProvider]:
    with ConversationalProvider(
        steps=2,
        tool="calculator",
        arguments=lambda n: {"expression": f"{n} + 1"},
        hold_models=frozenset({"slow-model"}),
    ) as running:
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        monkeypatch.setenv("OPENAI_BASE_URL", running.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        try:
            yield running
        finally:
            running.release.set()


@pytest.mark.parametrize(
    "backend",
    ["sqlite", pytest.param("kafka", marks=[pytest.mark.integration, pytest.mark.kafka])],
    indirect=True,
)
async def test_quick_runs_complete_while_a_slow_model_call_is_outstanding(
    backend: Backend, tmp_path: Path, provider: ConversationalProvider
) -> None:
    settings = Settings(
        home=tmp_path / "home",
        log_url=backend.url,
        registry_url=f"sqlite://{backend.registry_path}",
        topics=backend.topics,
    )
    runtime = AgentRuntime(settings, memory=False)
    await runtime.start()
    try:
        slow = await runtime.submit(Task(goal="take your time", model="openai:slow-model", max_steps=5))
        for _ in range(200):  # the slow run's first model call is under way
            if provider.held:
                break
            await asyncio.sleep(0.05)
        assert provider.held == 1
        quick = [
            await runtime.submit(Task(goal=f"quick {i}", model="openai:gpt-4o-mini", max_steps=5))
            for i in range(QUICK_RUNS)
        ]

        async def finished(run_id: str) -> str:
            async for event in runtime.follow(run_id):
                if event.type_name in ("RunCompleted", "RunFailed", "RunAborted", "RunCancelled"):
                    return event.type_name
            return "none"

        outcomes = await asyncio.wait_for(asyncio.gather(*(finished(r) for r in quick)), 120)
        assert outcomes == ["RunCompleted"] * QUICK_RUNS
        slow_view = await runtime.view(slow)
        assert provider.held == 1, "the slow model call is still outstanding"
        assert not slow_view.terminal and slow_view.step == 0, "the slow run has not planned yet"
        # Each quick run made three model calls (two tool steps and the answer), all after
        # the slow call began.
        assert provider.answered.get("gpt-4o-mini") == 3 * QUICK_RUNS

        provider.release.set()
        assert await asyncio.wait_for(finished(slow), 120) == "RunCompleted"
        slow_view = await runtime.view(slow)
        assert slow_view.status == "completed" and slow_view.step == 3
    finally:
        provider.release.set()
        await runtime.stop()
