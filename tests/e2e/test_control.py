"""Operator control end to end on the SQLite log: kill switches and rate limits reach a running
runtime through the control topic, and fair slots bound its model and tool calls.

Waits are for conditions (bounded), never assertions about time."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from agentstream.config import Settings
from agentstream.control import ControlError, OperatorControls
from agentstream.runtime import AgentRuntime, Task
from handlers.llm.base import ModelClient
from handlers.llm.messages import ModelRequest, ModelResponse, ToolCall, ToolResultMessage
from handlers.policy import TenantPolicies, ToolPolicy
from handlers.slots import FairSlots
from handlers.tool_executor import ToolExecutor
from handlers.tools.base import Tool, ToolContext, ToolRegistry, ToolResult, ToolSpec
from projections.blobs import BlobStore
from projections.control import ControlState
from projections.idempotency import SqliteIdempotencyLedger
from streams.envelope import root_meta
from streams.events import Event, ObservationRecorded, ToolCallDispatched, ToolSwitched
from streams.log import LogRecord
from streams.topics import Topics
from streams.worker import HandlerContext
from tests.support.backends import Backend
from tests.support.goal_model import GoalModel

pytestmark = pytest.mark.slow

CALCULATE = 'call calculator {"expression": "6 * 7"}'


@pytest.fixture
def goal_model(monkeypatch: pytest.MonkeyPatch) -> Iterator[GoalModel]:
    with GoalModel() as model:
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        monkeypatch.setenv("OPENAI_BASE_URL", model.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.delenv("AGENTSTREAM_PRICES", raising=False)
        yield model


BACKENDS = pytest.mark.parametrize(
    "backend",
    ["sqlite", pytest.param("kafka", marks=[pytest.mark.integration, pytest.mark.kafka])],
    indirect=True,
)


@pytest.fixture
async def runtime(tmp_path: Path, backend: Backend, goal_model: GoalModel) -> AsyncIterator[AgentRuntime]:
    settings = Settings(
        home=tmp_path / "home",
        log_url=backend.url,
        registry_url=f"sqlite://{backend.registry_path}",
        topics=backend.topics,
        model_slots=2,
        tool_slots=2,
    )
    running = AgentRuntime(settings, memory=False)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


def controls(runtime: AgentRuntime) -> OperatorControls:
    """Control actions on the runtime's log, as another process (the CLI) would append them."""
    return OperatorControls(runtime.log, runtime.codec, runtime.settings.topics, producer="test")


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


async def run(runtime: AgentRuntime, goal: str) -> list[Event]:
    run_id = await runtime.submit(Task(goal=goal, model="openai:gpt-4o-mini", tenant="acme"))
    events: list[Event] = []

    async def collect() -> None:
        async for event in runtime.follow(run_id):
            events.append(event)

    await asyncio.wait_for(collect(), 60)
    return events


def of_type(events: list[Event], name: str) -> list[Event]:
    return [e for e in events if e.type_name == name]


@BACKENDS
async def test_a_disabled_tool_is_rejected_and_the_model_is_told(runtime: AgentRuntime) -> None:
    await controls(runtime).switch_tool("calculator", enabled=False, by="ops", reason="maintenance")
    await until(lambda: runtime.control.disabled("calculator") is not None, "the switch reached the runtime")

    events = await run(runtime, CALCULATE)
    (rejected,) = of_type(events, "ToolCallRejected")
    assert rejected.reason == "tool_disabled"  # type: ignore[attr-defined]
    assert of_type(events, "ToolCallDispatched") == []
    assert of_type(events, "ObservationRecorded") == []
    # The model saw the rejection: its answer quotes the tool result it was given.
    answer = events[-1].answer  # type: ignore[attr-defined]
    assert events[-1].type_name == "RunCompleted"
    assert "tool_disabled" in answer and "maintenance" in answer

    await controls(runtime).switch_tool("calculator", enabled=True, by="ops")
    await until(lambda: runtime.control.disabled("calculator") is None, "the switch back reached the runtime")
    events = await run(runtime, CALCULATE)
    assert of_type(events, "ToolCallRejected") == []
    (observed,) = of_type(events, "ObservationRecorded")
    assert observed.ok and json.loads(observed.data_json)["result"] == 42  # type: ignore[attr-defined]
    assert runtime.tool_slots.held == 0 and runtime.model_slots.held == 0


@BACKENDS
async def test_a_rate_limit_event_changes_the_limiter_of_a_running_runtime(runtime: AgentRuntime) -> None:
    assert runtime.rate_limits.limit("openai:gpt-4o-mini") == (None, None)
    await controls(runtime).set_rate_limit(
        "openai:gpt-4o-mini", requests_per_minute=2, tokens_per_minute=None, by="ops"
    )
    await until(
        lambda: runtime.rate_limits.limit("openai:gpt-4o-mini") == (2, None), "the limit reached the runtime"
    )
    # A run of two model calls uses the whole bucket: the next call would have to wait.
    events = await run(runtime, CALCULATE)
    assert events[-1].type_name == "RunCompleted"
    assert runtime.rate_limits.delay("openai:gpt-4o-mini") > 0
    assert runtime.rate_limits.delay("anthropic:claude-sonnet-4-5") == 0
    # Lifting it frees the next call at once.
    await controls(runtime).set_rate_limit(
        "openai:gpt-4o-mini", requests_per_minute=None, tokens_per_minute=None, by="ops"
    )
    await until(lambda: runtime.rate_limits.delay("openai:gpt-4o-mini") == 0, "the limit was lifted")
    state = await controls(runtime).state()
    assert state.rate_limits() == {}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_control_actions_refuse_bad_input(runtime: AgentRuntime) -> None:
    with pytest.raises(ControlError, match="not a provider"):
        await controls(runtime).set_rate_limit("nope", requests_per_minute=1, tokens_per_minute=None, by="x")
    with pytest.raises(ControlError, match="at least 1"):
        await controls(runtime).set_rate_limit(
            "openai", requests_per_minute=0, tokens_per_minute=None, by="x"
        )
    with pytest.raises(ControlError, match="not a tool name"):
        await controls(runtime).switch_tool("", enabled=False, by="x")
    assert (await controls(runtime).state()).switches() == []


async def test_the_executor_refuses_a_call_dispatched_before_its_tool_was_disabled(tmp_path: Path) -> None:
    state = ControlState()
    state.apply(
        ToolSwitched(
            meta=root_meta("control", "*", "test"), tool="probe", enabled=False, reason="bug", by="ops"
        )
    )
    tool = ProbeTool(lambda: FairSlots(1))
    ledger = SqliteIdempotencyLedger(tmp_path / "ledger.db")
    executor = ToolExecutor(ToolRegistry([tool]), ledger, BlobStore(tmp_path / "blobs"), control=state)
    dispatched = ToolCallDispatched(
        meta=root_meta("run-1", "acme", "tool-router"),
        step=1,
        tool_call_id="call_1_0",
        tool="probe",
        arguments_json="{}",
        idempotency_key="k1",
        attempt=1,
        timeout_ms=1000,
    )
    record = LogRecord("t.events", 0, 0, b"run-1", b"", (), 0)
    try:
        outputs = await executor.handle(dispatched, HandlerContext("tool-executor", record, dispatched, 1))
        observation = outputs[0]
        assert isinstance(observation, ObservationRecorded)
        assert not observation.ok
        assert observation.error == "the tool probe is disabled by an operator (ops): bug"
        assert tool.held == []  # it never ran
        # Its outcome is recorded, so a redelivered dispatch never runs it either.
        claim = await ledger.claim("k1", "run-1", "probe")
        assert claim.state == "completed" and "disabled" in (claim.result_json or "")
    finally:
        await ledger.aclose()


class SlotProbe(ModelClient):
    """Answers by calling `probe` once, then finishes; notes how many model slots are held."""

    def __init__(self, slots: Callable[[], FairSlots]) -> None:
        self.slots = slots
        self.held: list[int] = []

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.held.append(self.slots().held)
        if any(isinstance(m, ToolResultMessage) for m in request.messages):
            return ModelResponse(text="done", model="probe")
        return ModelResponse(
            text="probing", model="probe", tool_calls=[ToolCall(id="c", name="probe", arguments={})]
        )


class ProbeTool(Tool):
    """Notes how many tool slots are held while it runs."""

    def __init__(self, slots: Callable[[], FairSlots]) -> None:
        self.slots = slots
        self.held: list[int] = []

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(name="probe", description="probe", parameters={"type": "object", "properties": {}})

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolResult:
        self.held.append(self.slots().held)
        return ToolResult.success("ok")


async def test_each_model_call_and_tool_call_holds_a_slot_while_it_runs(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "home",
        log_url=f"sqlite://{tmp_path}/log.db",
        registry_url=f"sqlite://{tmp_path}/registry.db",
        topics=Topics("slots", 2),
    )
    holder: list[AgentRuntime] = []
    model = SlotProbe(lambda: holder[0].model_slots)
    tool = ProbeTool(lambda: holder[0].tool_slots)
    registry = ToolRegistry([tool])
    runtime = AgentRuntime(settings, memory=False, registry=registry, models=lambda _spec: model)
    holder.append(runtime)
    await runtime.start()
    try:
        events = await run(runtime, "probe once")
    finally:
        await runtime.stop()
    assert events[-1].type_name == "RunCompleted"
    assert model.held == [1, 1] and tool.held == [1]
    assert runtime.model_slots.held == 0 and runtime.tool_slots.held == 0
    assert (runtime.model_slots.capacity, runtime.tool_slots.capacity) == (256, 256)


async def test_the_runtime_shares_its_slots_by_the_tenants_policy_weights(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "home",
        log_url=f"sqlite://{tmp_path}/log.db",
        registry_url=f"sqlite://{tmp_path}/registry.db",
        topics=Topics("weights", 1),
        model_slots=1,
    )
    policy = TenantPolicies(ToolPolicy(), {"gold": ToolPolicy(weight=3)})
    runtime = AgentRuntime(settings, memory=False, policy=policy)
    order: list[str] = []

    async def call(tenant: str) -> None:
        async with runtime.model_slots.slot(tenant):
            order.append(tenant)
            await asyncio.sleep(0)

    try:
        await asyncio.gather(*(call(t) for t in ["bronze"] * 100 + ["gold"] * 100))
    finally:
        await runtime.stop()
    window = order[1:41]  # after the first call took the free slot: rounds of bronze, gold x3
    assert (window.count("gold"), window.count("bronze")) == (30, 10)
