"""Kill -9 a worker process at random instants: no output is lost, none is duplicated."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streams.errors import PoisonEvent
from streams.events import AgentMessage, RunResumed
from streams.log import EventLog, OutgoingRecord
from tests.support.backends import Backend
from tests.support.events import message

ROOT = Path(__file__).resolve().parents[2]
INPUTS = 4000
KILLS = 10


def _spawn(backend: Backend, log_file: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "AGENTSTREAM_LOG_URL": backend.url,
        "AGENTSTREAM_REGISTRY_URL": f"sqlite://{backend.registry_path}",
        "AGENTSTREAM_TOPIC_PREFIX": backend.topics.prefix,
        "AGENTSTREAM_PARTITIONS": str(backend.topics.partitions),
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agentstream",
            "worker",
            "tests.support.handlers:SlowEcho",
            "--batch-size",
            "25",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log_file.open("ab"),
    )


async def _outputs(backend: Backend, log: EventLog) -> tuple[list[str], list[str]]:
    """(causation ids, event ids) of every RunResumed in the events topic."""
    codec = backend.codec()
    causes: list[str] = []
    ids: list[str] = []
    for partition in range(backend.topics.partitions):
        for record in await log.read(backend.topics.events, partition, 0, 1_000_000):
            try:
                event = await codec.decode(record.value)
            except PoisonEvent:
                continue
            if isinstance(event, RunResumed):
                causes.append(event.meta.causation_id or "")
                ids.append(event.meta.event_id)
    return causes, ids


@pytest.mark.slow
async def test_sigkill_at_random_points_loses_and_duplicates_nothing(
    backend: Backend, log: EventLog, tmp_path: Path
) -> None:
    codec = backend.codec()
    topic = backend.topics.events
    rng = random.Random(int(os.environ.get("AGENTSTREAM_TEST_SEED", time.time())))
    inputs: list[AgentMessage] = [message(f"run-{i % 50}", f"m{i}") for i in range(INPUTS)]
    expected = {m.meta.event_id for m in inputs}

    async def publish(chunk: list[AgentMessage]) -> None:
        await log.append(
            [OutgoingRecord(topic, m.meta.run_id.encode(), await codec.encode(topic, m)) for m in chunk]
        )

    await publish(inputs[: INPUTS // 2])
    worker_log = tmp_path / "worker.log"
    kills_mid_stream = 0
    for round_ in range(KILLS):
        worker = _spawn(backend, worker_log)
        await asyncio.sleep(rng.uniform(0.6, 2.0))
        if round_ == KILLS // 2:
            await publish(inputs[INPUTS // 2 :])  # more work arrives while workers die
            await asyncio.sleep(rng.uniform(0.1, 1.0))
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        causes, _ = await _outputs(backend, log)
        if len(set(causes)) < INPUTS:
            kills_mid_stream += 1

    worker = _spawn(backend, worker_log)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            causes, ids = await _outputs(backend, log)
            if len(causes) >= INPUTS:
                break
            assert worker.poll() is None, worker_log.read_text()[-3000:]
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # anything duplicated late would show up now
        causes, ids = await _outputs(backend, log)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)

    assert kills_mid_stream >= 2, "the kills must land while work is in flight"
    assert len(causes) == INPUTS, f"{len(causes)} outputs for {INPUTS} inputs"
    assert set(causes) == expected, "every input has its output"
    assert len(set(ids)) == INPUTS, "no output event was appended twice"
