"""Kill -9 the agent process while a hundred runs have model calls and tool calls in
flight, again and again: every run completes, no tool side effect happens twice, and no
model response is recorded twice for one request."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from agentstream.config import Settings
from agentstream.runtime import Task
from projections.run_view import RunViews
from streams.backends import open_log
from streams.codec import EventCodec
from streams.events import ObservationRecorded, PlanProposed, ToolCallDispatched
from streams.log import OutgoingRecord
from streams.registry import EmbeddedSchemaRegistry
from tests.e2e.test_agent_crash import _serve
from tests.support.backends import Backend
from tests.support.scripted_provider import ConversationalProvider

RUNS = 100
STEPS = 5
KILLS = 4

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "backend",
    ["sqlite", pytest.param("kafka", marks=[pytest.mark.integration, pytest.mark.kafka])],
    indirect=True,
)
async def test_a_hundred_runs_survive_kills_with_calls_in_flight(backend: Backend, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    effects = tmp_path / "effects.txt"
    effects.touch()
    seed = int(os.environ.get("AGENTSTREAM_TEST_SEED", time.time()))
    rng = random.Random(seed)
    log = open_log(backend.url)
    codec = EventCodec(EmbeddedSchemaRegistry(backend.registry_path))
    for spec in backend.topics.specs():
        await log.create_topic(spec)
    views = RunViews(log, codec, backend.topics)
    settings = Settings(home, backend.url, f"sqlite://{backend.registry_path}", backend.topics)
    topic = settings.topics.events
    tasks = [Task(goal=f"make five effects ({i})", max_steps=STEPS + 2) for i in range(RUNS)]
    await log.append(
        [OutgoingRecord(topic, t.run_id.encode(), await codec.encode(topic, t.event())) for t in tasks]
    )

    async def unfinished() -> int:
        return sum([not (await views.view(t.run_id)).terminal for t in tasks])

    with ConversationalProvider(steps=STEPS, latency_s=0.5) as provider:
        kills = 0
        deadline = time.monotonic() + 300
        while await unfinished() and time.monotonic() < deadline:
            agent = _serve(backend, home, provider, effects)
            if kills < KILLS:
                # Kill once calls are in flight, at a random point after that.
                while provider.in_flight == 0 and agent.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110 - another process's progress
                    await asyncio.sleep(0.05)
                await asyncio.sleep(rng.uniform(0.1, 1.0))
                in_flight_at_kill = provider.in_flight
                agent.send_signal(signal.SIGKILL)
                agent.wait()
                if in_flight_at_kill and await unfinished():
                    kills += 1
            else:
                while await unfinished() and time.monotonic() < deadline:
                    assert agent.poll() is None, (home / "serve.log").read_text()[-3000:]
                    await asyncio.sleep(0.5)
                agent.send_signal(signal.SIGTERM)
                agent.wait(timeout=30)
        max_in_flight = provider.max_in_flight

    outcomes = Counter[str]()
    for t in tasks:
        view = await views.view(t.run_id)
        outcomes[view.status] += 1
        events = await views.events(t.run_id)
        assert len({e.meta.event_id for e in events}) == len(events), "no event appended twice"
        plans = [e.step for e in events if isinstance(e, PlanProposed)]
        assert len(plans) == len(set(plans)), f"a model response was recorded twice (seed {seed})"
        dispatched = [e.tool_call_id for e in events if isinstance(e, ToolCallDispatched)]
        observed = [e.tool_call_id for e in events if isinstance(e, ObservationRecorded)]
        assert len(dispatched) == len(set(dispatched)), "no call dispatched twice"
        assert sorted(observed) == sorted(dispatched), "every dispatched call observed once"
    await log.close()

    assert kills == KILLS, "the kills must land while runs are in flight"
    assert outcomes == Counter({"completed": RUNS}), f"seed {seed}"
    assert max_in_flight >= RUNS // 2, "many model calls were in flight at once"
    lines = [line.split()[0] for line in effects.read_text().splitlines()]
    repeated = [key for key, count in Counter(lines).items() if count > 1]
    assert repeated == [], f"a non-idempotent side effect ran twice (seed {seed})"
