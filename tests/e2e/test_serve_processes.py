"""`agentstream serve --processes 2`: two member processes share the partitions, a
SIGKILLed one is restarted, and its run still completes with every event exactly once.

On SQLite the partitions of each run decide its member; on Kafka the broker does, so
there the runs merely complete whichever member has them."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from agentstream.runtime import Task
from agentstream.supervise import Child, RestartPolicy, Supervisor
from projections.run_view import RunViews
from streams.backends import open_log
from streams.codec import EventCodec
from streams.log import OutgoingRecord
from streams.partitioning import partition_for
from streams.registry import EmbeddedSchemaRegistry
from streams.topics import Topics
from tests.support.backends import Backend
from tests.support.scripted_provider import ConversationalProvider

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4
STEPS = 3

pytestmark = pytest.mark.slow


def _task_for_member(member: int, members: int = 2) -> Task:
    """A task whose run lands in a partition member `member` of `members` owns."""
    while True:
        task = Task(goal=f"make {STEPS} effects", max_steps=STEPS + 2)
        if partition_for(task.run_id.encode(), PARTITIONS) % members == member:
            return task


def _tail(log_file: Path) -> str:
    return log_file.read_text()[-3000:]


def _serve(env: dict[str, str], log_file: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "agentstream", "serve", "--processes", "2"]
        + ["--model", "openai:gpt-4o-mini", "--tool", "tests.support.tools:SideEffect"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log_file.open("ab"),
    )


async def _until(
    check: Callable[[], Awaitable[bool]], what: str, log_file: Path, timeout_s: float = 240
) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"gave up waiting: {what}\n" + _tail(log_file)
        await asyncio.sleep(0.2)


def _pids(log_file: Path, member: int) -> list[int]:
    return [int(p) for p in re.findall(rf"^member {member}: pid (\d+) started$", log_file.read_text(), re.M)]


async def test_two_processes_share_the_partitions_and_a_killed_one_is_restarted(
    backend: Backend, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    effects = tmp_path / "effects.txt"
    effects.touch()
    serve_log = tmp_path / "serve.log"
    url = backend.url
    topics = Topics(prefix=backend.topics.prefix, partitions=PARTITIONS)
    log = open_log(url)
    codec = EventCodec(EmbeddedSchemaRegistry(tmp_path / "registry.db"))
    for spec in topics.specs():
        await log.create_topic(spec)
    views = RunViews(log, codec, topics)

    async def submit(task: Task) -> None:
        event = await codec.encode(topics.events, task.event())
        await log.append([OutgoingRecord(topics.events, task.run_id.encode(), event)])

    async def ended(*tasks: Task) -> bool:
        return all([(await views.view(t.run_id)).terminal for t in tasks])

    with ConversationalProvider(steps=STEPS) as provider:
        env = {
            **os.environ,
            "AGENTSTREAM_HOME": str(home),
            "AGENTSTREAM_LOG_URL": url,
            "AGENTSTREAM_REGISTRY_URL": f"sqlite://{tmp_path}/registry.db",
            "AGENTSTREAM_TOPIC_PREFIX": topics.prefix,
            "AGENTSTREAM_PARTITIONS": str(PARTITIONS),
            "AGENTSTREAM_TEST_EFFECTS": str(effects),
            "AGENTSTREAM_TEST_EFFECT_LINGER": "1.0",
            "OPENAI_BASE_URL": provider.base_url,
            "OPENAI_API_KEY": "test-key",
            "NO_PROXY": "127.0.0.1",
            "PYTHONPATH": str(ROOT),
        }
        serve = _serve(env, serve_log)
        try:
            # One run in a partition of each member: both complete.
            reference, other = _task_for_member(1), _task_for_member(0)
            await submit(reference)
            await submit(other)
            await _until(lambda: ended(reference, other), "the runs of both members", serve_log)
            assert len(_pids(serve_log, 0)) == len(_pids(serve_log, 1)) == 1

            # A run of member 1, in flight when member 1 is killed.
            victim = _task_for_member(1)
            await submit(victim)

            async def dispatched() -> bool:
                events = await views.events(victim.run_id)
                return any(e.type_name == "ToolCallDispatched" for e in events)

            await _until(dispatched, "the victim's first tool call", serve_log)
            assert not (await views.view(victim.run_id)).terminal, "the kill must land mid-run"
            [first_pid] = _pids(serve_log, 1)
            os.kill(first_pid, signal.SIGKILL)

            async def restarted() -> bool:
                return len(_pids(serve_log, 1)) == 2

            await _until(restarted, "member 1 restarted", serve_log)
            await _until(lambda: ended(victim), "the victim's run", serve_log)
            assert serve.poll() is None, "the supervisor keeps running"
        finally:
            serve.send_signal(signal.SIGTERM)
            code = serve.wait(timeout=60)
    text = serve_log.read_text()
    assert code == 0, text[-3000:]
    assert "member 1: exited with -9; restarting" in text
    for pid in _pids(serve_log, 0) + _pids(serve_log, 1):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # every child stopped with the supervisor

    for task in (reference, other, victim):
        assert (await views.view(task.run_id)).status == "completed", task.run_id
    expected = Counter(e.type_name for e in await views.events(reference.run_id))
    events = await views.events(victim.run_id)
    assert Counter(e.type_name for e in events) == expected, "every event of the killed run exactly once"
    assert expected["ToolCallDispatched"] == STEPS and expected["RunCompleted"] == 1
    assert len({e.meta.event_id for e in events}) == len(events)
    keys = [line.split()[0] for line in effects.read_text().splitlines()]
    assert [k for k, n in Counter(keys).items() if n > 1] == [], "no side effect ran twice"
    await log.close()


def test_a_child_that_keeps_dying_makes_the_supervisor_give_up() -> None:
    lines: list[str] = []
    children = [
        Child(i, [sys.executable, "-c", f"import sys; sys.exit({i + 3})"], dict(os.environ)) for i in range(2)
    ]
    policy = RestartPolicy(max_restarts=2, backoff_s=0.01, max_backoff_s=0.02, grace_s=5)
    code = Supervisor(children, policy=policy, echo=lines.append, tick_s=0.01).run()
    assert code == 1
    gave_up = [line for line in lines if "giving up" in line]
    assert len(gave_up) == 1 and "3 times" in gave_up[0]
    dying = gave_up[0].split(":")[0]
    assert sum(1 for line in lines if line.startswith(f"{dying}: pid")) == 3, "started, then restarted twice"
