"""Upstream systems on the real Kafka broker and schema registry: the example producer
submits tasks to the tasks topic and the example consumer decodes the events topic, both
as plain scripts that cannot import agentstream."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path

import pytest

from agentstream.config import Settings
from agentstream.runtime import AgentRuntime
from handlers.planner import PlannerSettings
from streams.events import Event
from streams.topics import Topics
from tests.support.goal_model import GoalModel

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.registry, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
OURS = {"agentstream", "streams", "handlers", "projections", "sandbox_jobs"}

# Runs an example with every agentstream package made unimportable, then checks none was loaded.
ISOLATED = f"""
import runpy, sys
class Forbidden:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {sorted(OURS)!r}:
            raise ImportError(f"the upstream examples must not import {{name}}")
        return None
sys.meta_path.insert(0, Forbidden())
script, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_path(script, run_name="__main__")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {sorted(OURS)!r})
assert not loaded, loaded
"""


async def run_example(script: str, *args: str, cwd: Path) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        ISOLATED,
        str(EXAMPLES / script),
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 180)
    assert process.returncode == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


async def test_upstream_tasks_become_one_run_and_an_external_consumer_decodes_it(
    kafka_bootstrap: str, registry_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    topics = Topics(prefix=f"up{uuid.uuid4().hex[:8]}", partitions=2)
    settings = Settings(
        home=tmp_path / "home",
        log_url=f"kafka://{kafka_bootstrap}",
        registry_url=registry_url,
        topics=topics,
        store_url=f"sqlite://{tmp_path}/views.db",
    )
    key = f"order-{uuid.uuid4().hex[:8]}"
    produce = [
        "--bootstrap", kafka_bootstrap, "--registry", registry_url, "--topic", topics.tasks,
        "--schemas", str(ROOT / "schemas" / "avro"), "--tenant", "acme", "--key", key,
        "--goal", 'call calculator {"expression": "6 * 7"}', "--model", "openai:gpt-4o-mini",
    ]  # fmt: skip
    with GoalModel() as model:
        monkeypatch.setenv("OPENAI_BASE_URL", model.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        runtime = AgentRuntime(settings, planner=PlannerSettings(), memory=False)
        await runtime.start()
        try:
            # A producer that retries (the same task twice), then another process sending it again.
            sent = await run_example("upstream_producer.py", *produce, "--times", "2", cwd=tmp_path)
            again = await run_example("upstream_producer.py", *produce, cwd=tmp_path)
            run_id = sent[0]["run_id"]
            assert again[0]["run_id"] == run_id
            events: list[Event] = []

            async def collect() -> None:
                async for event in runtime.follow(run_id):
                    events.append(event)

            await asyncio.wait_for(collect(), 120)
            intake = runtime.workers[-1]
            while intake.stats.records < 3:  # every submission was seen by the intake
                runtime.check_health()
                await asyncio.sleep(0.1)
            all_runs = [
                event
                for partition in range(topics.partitions)
                for record in await runtime.log.read(topics.events, partition, 0, 10_000)
                if (event := await runtime.codec.decode(record.value)).type_name == "TaskSubmitted"
            ]
            decoded = await run_example(
                "events_consumer.py",
                "--bootstrap", kafka_bootstrap, "--registry", registry_url,
                "--topic", topics.events, "--run", run_id, "--idle", "30",
                cwd=tmp_path,
            )  # fmt: skip
        finally:
            await runtime.stop()
    assert [e.meta.run_id for e in all_runs] == [run_id], "three submissions, one run"
    assert events[0].type_name == "TaskSubmitted" and events[-1].type_name == "RunCompleted"
    assert events[-1].answer.endswith('"result":42}')  # type: ignore[attr-defined]
    # The external consumer decoded every event of the run, in order, with the same content.
    assert [d["type"] for d in decoded] == [e.type_name for e in events]
    assert [d["meta"]["event_id"] for d in decoded] == [e.meta.event_id for e in events]
    assert decoded[0]["goal"] == 'call calculator {"expression": "6 * 7"}'
    assert decoded[0]["upstream_idempotency_key"] == key
    assert decoded[-1]["answer"] == events[-1].answer  # type: ignore[attr-defined]


async def test_a_task_the_intake_refuses_is_dead_lettered_with_its_reason(
    kafka_bootstrap: str, registry_url: str, tmp_path: Path
) -> None:
    topics = Topics(prefix=f"up{uuid.uuid4().hex[:8]}", partitions=1)
    settings = Settings(
        home=tmp_path / "home",
        log_url=f"kafka://{kafka_bootstrap}",
        registry_url=registry_url,
        topics=topics,
        store_url=f"sqlite://{tmp_path}/views.db",
    )
    runtime = AgentRuntime(settings, memory=False)
    await runtime.start()
    try:
        await run_example(
            "upstream_producer.py",
            "--bootstrap", kafka_bootstrap, "--registry", registry_url, "--topic", topics.tasks,
            "--schemas", str(ROOT / "schemas" / "avro"), "--tenant", "acme", "--goal", " ",
            cwd=tmp_path,
        )  # fmt: skip
        dead = []
        for _ in range(600):
            dead = await runtime.log.read(topics.dlq, 0, 0, 10)
            if dead:
                break
            runtime.check_health()
            await asyncio.sleep(0.1)
        events = await runtime.log.read(topics.events, 0, 0, 10)
    finally:
        await runtime.stop()
    assert [r.header("dlq.error") for r in dead] == [b"HandlerRejected: a task needs a goal"]
    assert events == [], "a refused task starts no run"
