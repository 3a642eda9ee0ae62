"""Sandboxed tools end to end: a model asks for run_python / run_shell, the executor
launches a real bubblewrap job (the local launcher), the job watcher records its result,
and the run goes on. On SQLite and on Kafka; the crash test SIGKILLs the agent process
while a job runs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentstream.config import Settings
from agentstream.runtime import AgentRuntime, Task
from handlers.job_watcher import JobWatcher
from handlers.llm.base import ModelClient, RetryingModel, RetryPolicy, resolve_model
from handlers.tool_executor import ToolExecutor
from handlers.tools.base import ToolRegistry, idempotency_key
from handlers.tools.sandbox import sandbox_tools
from projections.blobs import BlobStore
from projections.idempotency import SqliteIdempotencyLedger
from projections.run_view import RunViews
from sandbox_jobs.base import open_launcher
from streams.backends import open_log
from streams.codec import EventCodec
from streams.envelope import caused_by
from streams.events import (
    Event,
    ObservationRecorded,
    RunCancelled,
    SandboxJobLaunched,
    ToolCallDispatched,
    ToolCallRequested,
)
from streams.log import LogRecord, OutgoingRecord
from streams.registry import EmbeddedSchemaRegistry
from streams.topics import Topics
from streams.worker import HandlerContext
from tests.llm_servers import ProviderServer, openai_reply
from tests.support.backends import Backend
from tests.support.counting_launcher import CountingLauncher
from tests.support.sandbox import leftover_processes, require_bwrap
from tests.support.scripted_provider import ConversationalProvider

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.sandbox]


@pytest.fixture(autouse=True)
def bubblewrap() -> None:
    require_bwrap()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ProviderServer]:
    with ProviderServer() as running:
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        monkeypatch.setenv("OPENAI_BASE_URL", running.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        yield running


def fast_models(spec: str) -> ModelClient:
    return RetryingModel(resolve_model(spec), RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02))


@dataclass
class Agent:
    runtime: AgentRuntime
    launcher: CountingLauncher
    jobs: Path

    async def append(self, *events: Event) -> None:
        topic = self.runtime.settings.topics.events
        codec = self.runtime.codec
        await self.runtime.log.append(
            [OutgoingRecord(topic, e.meta.run_id.encode(), await codec.encode(topic, e)) for e in events]
        )

    async def events(self, run_id: str) -> list[Event]:
        return await self.runtime.views.events(run_id)

    async def wait_for(self, run_id: str, type_name: str, count: int = 1) -> list[Event]:
        async with asyncio.timeout(90):
            while True:
                found = [e for e in await self.events(run_id) if e.type_name == type_name]
                if len(found) >= count:
                    return found
                self.runtime.check_health()
                await asyncio.sleep(0.05)


@pytest.fixture
async def agent(backend: Backend, tmp_path: Path, server: ProviderServer) -> AsyncIterator[Agent]:
    jobs = tmp_path / "jobs"
    settings = Settings(
        home=tmp_path / "home",
        log_url=backend.url,
        registry_url=f"sqlite://{backend.registry_path}",
        topics=backend.topics,
        sandbox_url=f"local://{jobs}",
    )
    launcher = CountingLauncher(open_launcher(settings.sandbox_url), tmp_path / "launches.txt")
    runtime = AgentRuntime(settings, models=fast_models, launcher=launcher, memory=False)
    await runtime.start()
    yield Agent(runtime, launcher, jobs)
    await runtime.stop()


async def finish(agent: Agent, run_id: str) -> list[Event]:
    async with asyncio.timeout(90):
        async for _ in agent.runtime.follow(run_id):
            pass
    return await agent.events(run_id)


def observations(events: list[Event]) -> list[ObservationRecorded]:
    return [e for e in events if isinstance(e, ObservationRecorded)]


async def test_run_python_output_comes_back_as_an_observation(agent: Agent, server: ProviderServer) -> None:
    server.script(
        openai_reply("Let me compute.", [("c1", "run_python", {"code": "print(6 * 7)", "timeout_s": 60})]),
        openai_reply("It is 42."),
    )
    run_id = await agent.runtime.submit(Task(goal="6*7?", model="openai:gpt-4o-mini"))
    events = await finish(agent, run_id)
    view = await agent.runtime.view(run_id)
    assert view.status == "completed", view.error
    assert view.answer == "It is 42."
    [observed] = observations(events)
    assert observed.ok, observed.error
    data = json.loads(observed.data_json or "")
    assert (data["exit_code"], data["stdout"], data["state"]) == (0, "42\n", "succeeded")
    [launched] = [e for e in events if isinstance(e, SandboxJobLaunched)]
    assert launched.launcher == "local"
    assert agent.launcher.launched() == [launched.job_id]
    # The model saw the job's output as the tool result.
    [tool_message] = [m for m in server.requests[1].json["messages"] if m["role"] == "tool"]
    assert json.loads(tool_message["content"])["stdout"] == "42\n"
    assert view.tool_calls == 1
    assert not (agent.jobs / launched.job_id).exists(), "a recorded job is deleted"


async def test_a_failing_script_is_a_failed_observation_with_its_exit_code(
    agent: Agent, server: ProviderServer
) -> None:
    code = "import sys\nprint('no such file', file=sys.stderr)\nsys.exit(3)\n"
    server.script(
        openai_reply("Trying.", [("c1", "run_python", {"code": code})]),
        openai_reply("It failed."),
    )
    run_id = await agent.runtime.submit(Task(goal="try", model="openai:gpt-4o-mini"))
    events = await finish(agent, run_id)
    assert (await agent.runtime.view(run_id)).status == "completed"
    [observed] = observations(events)
    assert not observed.ok
    assert observed.error == "exited with code 3"
    data = json.loads(observed.data_json or "")
    assert (data["exit_code"], data["stderr"], data["state"]) == (3, "no such file\n", "failed")


async def test_a_duplicated_dispatch_launches_one_job(agent: Agent, server: ProviderServer) -> None:
    server.script(
        openai_reply("Working.", [("c1", "run_shell", {"command": "sleep 2; echo done"})]),
        openai_reply("Done."),
    )
    run_id = await agent.runtime.submit(Task(goal="work", model="openai:gpt-4o-mini"))
    [dispatched] = await agent.wait_for(run_id, "ToolCallDispatched")
    await agent.wait_for(run_id, "SandboxJobLaunched")
    assert isinstance(dispatched, ToolCallDispatched)
    # The same dispatch again (a replay), then a harmless calculator call: once the latter is
    # observed, the executor has handled the duplicate too.
    duplicate = dispatched.model_copy(update={"meta": caused_by(dispatched.meta, "replay", 0)})
    marker = dispatched.model_copy(
        update={
            "meta": caused_by(dispatched.meta, "replay", 1),
            "tool_call_id": "marker",
            "tool": "calculator",
            "arguments_json": '{"expression":"1+1"}',
            "idempotency_key": "marker-key",
        }
    )
    await agent.append(duplicate, marker)
    events = await finish(agent, run_id)
    async with asyncio.timeout(60):
        while not any(e.tool_call_id == "marker" for e in observations(events)):
            await asyncio.sleep(0.05)
            events = await agent.events(run_id)
    assert (await agent.runtime.view(run_id)).status == "completed"
    launched = {e.job_id for e in events if isinstance(e, SandboxJobLaunched)}
    assert len(launched) == 1
    assert agent.launcher.launched() == list(launched), "the job was created exactly once"
    c1 = [e for e in observations(events) if e.tool_call_id == dispatched.tool_call_id]
    assert len(c1) == 1 and c1[0].ok
    assert json.loads(c1[0].data_json or "")["stdout"] == "done\n"


async def test_cancelling_a_run_stops_its_job_and_records_no_success(
    agent: Agent, server: ProviderServer
) -> None:
    server.script(openai_reply("Waiting.", [("c1", "run_shell", {"command": "sleep 120; echo never"})]))
    run_id = await agent.runtime.submit(Task(goal="wait", model="openai:gpt-4o-mini"))
    [launched] = await agent.wait_for(run_id, "SandboxJobLaunched")
    assert isinstance(launched, SandboxJobLaunched)
    cause = (await agent.events(run_id))[-1]
    await agent.append(
        RunCancelled(meta=caused_by(cause.meta, "person", 0), reason="enough", requested_by="me")
    )
    [observed] = await agent.wait_for(run_id, "ObservationRecorded")
    assert isinstance(observed, ObservationRecorded)
    assert not observed.ok
    assert observed.error is not None and "the run is cancelled" in observed.error
    data = json.loads(observed.data_json or "")
    assert data["state"] == "cancelled", "the launcher stopped the job; it did not run to its end"
    assert "never" not in data["stdout"]
    assert await leftover_processes(launched.job_id) == [], "nothing of the job runs on"
    assert (await agent.runtime.view(run_id)).status == "cancelled"
    assert len(server.requests) == 1, "the model is not asked again for a cancelled run"


# --------------------------------------------------------------------------- crash


def _serve(
    backend: Backend, home: Path, provider: ConversationalProvider, launches: Path
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "AGENTSTREAM_HOME": str(home),
        "AGENTSTREAM_LOG_URL": backend.url,
        "AGENTSTREAM_REGISTRY_URL": f"sqlite://{backend.registry_path}",
        "AGENTSTREAM_TOPIC_PREFIX": backend.topics.prefix,
        "AGENTSTREAM_PARTITIONS": str(backend.topics.partitions),
        "AGENTSTREAM_SANDBOX_URL": f"local://{home}/jobs",
        "AGENTSTREAM_TEST_LAUNCHES": str(launches),
        "OPENAI_BASE_URL": provider.base_url,
        "OPENAI_API_KEY": "test-key",
        "NO_PROXY": "127.0.0.1",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.sandbox_agent"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(home / "serve.log").open("ab"),
    )


async def test_a_job_outlives_a_killed_agent_and_is_recorded_once(backend: Backend, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    launches = tmp_path / "launches.txt"
    log = open_log(backend.url)
    codec = EventCodec(EmbeddedSchemaRegistry(backend.registry_path))
    for spec in backend.topics.specs():
        await log.create_topic(spec)
    views = RunViews(log, codec, backend.topics)
    task = Task(goal="two slow jobs", max_steps=5)
    topic = backend.topics.events
    await log.append([OutgoingRecord(topic, task.run_id.encode(), await codec.encode(topic, task.event()))])

    def program(n: int) -> dict[str, object]:
        return {"code": f"import time\ntime.sleep(3)\nprint('job {n} done')\n", "timeout_s": 60}

    async def launched_count() -> int:
        return sum(1 for e in await views.events(task.run_id) if e.type_name == "SandboxJobLaunched")

    kills = 0
    with ConversationalProvider(steps=2, tool="run_python", arguments=program) as provider:
        deadline = time.monotonic() + 240
        for n in (1, 2):  # kill the agent while each job runs
            agent = _serve(backend, home, provider, launches)
            # The first kill lands as soon as the job exists, which is often before its
            # SandboxJobLaunched is committed: the restarted executor launches it again,
            # which must create nothing. The second lands once the launch is on the log.
            while time.monotonic() < deadline and (
                len(list((home / "jobs").glob("sbx-*"))) < n if n == 1 else await launched_count() < n
            ):
                assert agent.poll() is None, (home / "serve.log").read_text()[-3000:]
                await asyncio.sleep(0.01)
            agent.send_signal(signal.SIGKILL)
            agent.wait()
            observed = [e for e in await views.events(task.run_id) if e.type_name == "ObservationRecorded"]
            kills += len(observed) < n  # the kill landed before this job's result was recorded
        agent = _serve(backend, home, provider, launches)
        view = await views.view(task.run_id)
        while not view.terminal and time.monotonic() < deadline:
            assert agent.poll() is None, (home / "serve.log").read_text()[-3000:]
            await asyncio.sleep(0.2)
            view = await views.view(task.run_id)
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
    events = await views.events(task.run_id)
    await log.close()

    assert kills == 2, "each kill must land while its job runs"
    assert view.status == "completed", view.error
    launched = [e for e in events if isinstance(e, SandboxJobLaunched)]
    assert sorted(launches.read_text().split()) == sorted({e.job_id for e in launched}), (
        "each job created once"
    )
    assert len({e.job_id for e in launched}) == 2
    observed = observations(events)
    assert sorted(e.tool_call_id for e in observed) == sorted({e.tool_call_id for e in launched})
    assert sorted(json.loads(e.data_json or "")["stdout"] for e in observed) == [
        "job 0 done\n",
        "job 1 done\n",
    ]
    assert all(e.ok for e in observed)
    assert len({e.meta.event_id for e in events}) == len(events), "no event appended twice"


# --------------------------------------------------------------------------- two watchers


@pytest.mark.integration
@pytest.mark.kafka
async def test_two_watchers_share_the_partitions_and_record_each_job_once(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A second watcher joins the group while jobs run: partitions move between them, and
    still every job's result is recorded exactly once."""
    topics = Topics(prefix=f"t{uuid.uuid4().hex[:10]}", partitions=3)
    log = open_log(f"kafka://{kafka_bootstrap}")
    for spec in topics.specs():
        await log.create_topic(spec)
    codec = EventCodec(EmbeddedSchemaRegistry(tmp_path / "registry.db"))
    views = RunViews(log, codec, topics)
    launcher = open_launcher(f"local://{tmp_path}/jobs")
    blobs = BlobStore(tmp_path / "blobs")
    registry = ToolRegistry(sandbox_tools())
    ledger = SqliteIdempotencyLedger(tmp_path / "ledger.db")
    executor = ToolExecutor(registry, ledger, blobs, launcher=launcher, views=views)
    runs: list[str] = []
    for n in range(6):
        task = Task(goal=f"job {n}")
        args = {"command": f"sleep 2; echo {n}"}
        request = ToolCallRequested(
            meta=caused_by(task.event().meta, "planner", 0), step=1, tool_call_id="c1", tool="run_shell",
            arguments_json=json.dumps(args),
        )  # fmt: skip
        dispatched = ToolCallDispatched(
            meta=caused_by(request.meta, "tool-router", 0), step=1, tool_call_id="c1", tool="run_shell",
            arguments_json=json.dumps(args), idempotency_key=idempotency_key(task.run_id, 1, "run_shell", args),
            timeout_ms=30_000,
        )  # fmt: skip
        record = LogRecord(topics.events, 0, 0, None, b"", (), 0)
        launched = await executor.handle(dispatched, HandlerContext("tool-executor", record, dispatched, 1))
        topic = topics.events
        await log.append(
            [
                OutgoingRecord(topic, task.run_id.encode(), await codec.encode(topic, e))
                for e in (task.event(), request, dispatched, *launched)
            ]
        )
        runs.append(task.run_id)

    def watcher(member: str) -> JobWatcher:
        return JobWatcher(
            log, codec, RunViews(log, codec, topics), launcher, blobs, topics=topics, member=member
        )

    first, second = watcher("a"), watcher("b")
    await first.start()
    try:

        async def observed() -> dict[str, int]:
            counts = {}
            for run_id in runs:
                counts[run_id] = sum(
                    1 for e in await views.events(run_id) if e.type_name == "ObservationRecorded"
                )
            return counts

        async with asyncio.timeout(120):
            while not first.pending:  # the first one has picked up launches
                await first.step()
            await second.start()
            while min((await observed()).values()) < 1:
                await asyncio.gather(first.step(), second.step())
                await asyncio.sleep(0.05)
            for _ in range(20):  # anything recorded twice would show up now
                await asyncio.gather(first.step(), second.step())
        assert await observed() == dict.fromkeys(runs, 1)
        assert first.recorded + second.recorded == len(runs)
    finally:
        await first.stop()
        await second.stop()
        await ledger.aclose()
        await launcher.aclose()
        await log.close()
