"""Kill -9 the agent process mid-run, again and again: the run still completes, and no
side effect of a non-idempotent tool ever happens twice."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from agentstream.config import Settings
from agentstream.runtime import Task
from projections.run_view import RunViews
from streams.backends import open_log
from streams.codec import EventCodec
from streams.log import OutgoingRecord
from streams.registry import EmbeddedSchemaRegistry
from tests.support.backends import Backend
from tests.support.scripted_provider import ConversationalProvider

ROOT = Path(__file__).resolve().parents[2]
STEPS = 10

pytestmark = pytest.mark.slow


def _serve(
    backend: Backend, home: Path, provider: ConversationalProvider, effects: Path
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "AGENTSTREAM_HOME": str(home),
        "AGENTSTREAM_LOG_URL": backend.url,
        "AGENTSTREAM_REGISTRY_URL": f"sqlite://{backend.registry_path}",
        "AGENTSTREAM_TOPIC_PREFIX": backend.topics.prefix,
        "AGENTSTREAM_PARTITIONS": str(backend.topics.partitions),
        "AGENTSTREAM_TEST_EFFECTS": str(effects),
        "AGENTSTREAM_TEST_EFFECT_LINGER": "0.8",
        "OPENAI_BASE_URL": provider.base_url,
        "OPENAI_API_KEY": "test-key",
        "NO_PROXY": "127.0.0.1",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agentstream",
            "serve",
            "--model",
            "openai:gpt-4o-mini",
            "--tool",
            "tests.support.tools:SideEffect",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(home / "serve.log").open("ab"),
    )


async def test_killed_agent_resumes_without_repeating_side_effects(backend: Backend, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    effects = tmp_path / "effects.txt"
    effects.touch()
    rng = random.Random(int(os.environ.get("AGENTSTREAM_TEST_SEED", time.time())))
    log = open_log(backend.url)
    codec = EventCodec(EmbeddedSchemaRegistry(backend.registry_path))
    for spec in backend.topics.specs():
        await log.create_topic(spec)
    views = RunViews(log, codec, backend.topics)
    settings = Settings(home, backend.url, f"sqlite://{backend.registry_path}", backend.topics)
    task = Task(goal="make six effects", max_steps=STEPS + 2)
    topic = settings.topics.events
    await log.append([OutgoingRecord(topic, task.run_id.encode(), await codec.encode(topic, task.event()))])

    with ConversationalProvider(steps=STEPS) as provider:
        kills_mid_run = 0
        deadline = time.monotonic() + 240
        view = await views.view(task.run_id)
        while not view.terminal and time.monotonic() < deadline:
            agent = _serve(backend, home, provider, effects)
            if kills_mid_run < 4:
                await asyncio.sleep(rng.uniform(1.2, 2.2))
                agent.send_signal(signal.SIGKILL)
                agent.wait()
                if not (await views.view(task.run_id)).terminal:
                    kills_mid_run += 1
            else:
                while not view.terminal and time.monotonic() < deadline:
                    assert agent.poll() is None, (home / "serve.log").read_text()[-3000:]
                    await asyncio.sleep(0.3)
                    view = await views.view(task.run_id)
                agent.send_signal(signal.SIGTERM)
                agent.wait(timeout=30)
            view = await views.view(task.run_id)
    events = await views.events(task.run_id)
    await log.close()

    assert kills_mid_run == 4, "the kills must land while the run is in flight"
    assert view.status == "completed", view.error
    lines = [line.split()[0] for line in effects.read_text().splitlines()]
    repeated = [key for key, count in Counter(lines).items() if count > 1]
    assert repeated == [], "a non-idempotent side effect ran twice"
    dispatched = [e for e in events if e.type_name == "ToolCallDispatched"]
    observed = [e for e in events if e.type_name == "ObservationRecorded"]
    assert len({e.tool_call_id for e in dispatched}) == len(dispatched), "no call dispatched twice"  # type: ignore[attr-defined]
    assert sorted(e.tool_call_id for e in observed) == sorted(e.tool_call_id for e in dispatched)  # type: ignore[attr-defined]
    assert len({e.meta.event_id for e in events}) == len(events), "no event appended twice"
    assert view.step >= STEPS
    assert len(lines) >= STEPS - 4, "effects interrupted by a kill may be lost, never repeated"
