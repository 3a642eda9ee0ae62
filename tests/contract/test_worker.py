"""The worker runtime contract, run on SQLite and Kafka: exactly once, and poison to the DLQ."""

from __future__ import annotations

import json
import struct

from streams.codec import DeadLetterReason, EventCodec
from streams.errors import PoisonEvent
from streams.events import RunResumed
from streams.log import EventLog, LogRecord, OutgoingRecord
from streams.worker import RetryPolicy, Worker
from tests.support.backends import Backend
from tests.support.events import message
from tests.support.handlers import Echo, Gate


async def _no_sleep(_: float) -> None:
    return None


def _worker(backend: Backend, log: EventLog, codec: EventCodec, **kwargs: object) -> Worker:
    return Worker(
        log,
        codec,
        Echo(),
        topics=backend.topics,
        batch_size=50,
        poll_timeout_s=0.2,
        retry=RetryPolicy(max_attempts=3),
        sleep=_no_sleep,
        **kwargs,  # type: ignore[arg-type]
    )


async def _drain(worker: Worker, idle_polls: int = 3) -> None:
    idle = 0
    while idle < idle_polls:
        idle = 0 if await worker.step() else idle + 1


async def _all(log: EventLog, topic: str) -> list[LogRecord]:
    out: list[LogRecord] = []
    for partition in range(await log.partitions(topic)):
        out += await log.read(topic, partition, 0, 100_000)
    return out


async def _outputs(log: EventLog, codec: EventCodec, topic: str) -> list[RunResumed]:
    outputs = []
    for record in await _all(log, topic):
        try:
            event = await codec.decode(record.value)
        except PoisonEvent:
            continue
        if isinstance(event, RunResumed):
            outputs.append(event)
    return outputs


async def _append(backend: Backend, log: EventLog, codec: EventCodec, contents: list[str]) -> list[str]:
    topic = backend.topics.events
    events = [message(f"run-{i % 7}", c) for i, c in enumerate(contents)]
    await log.append(
        [OutgoingRecord(topic, e.meta.run_id.encode(), await codec.encode(topic, e)) for e in events]
    )
    return [e.meta.event_id for e in events]


async def test_each_event_is_handled_once_and_outputs_are_linked(backend: Backend, log: EventLog) -> None:
    codec = backend.codec()
    ids = await _append(backend, log, codec, [f"m{i}" for i in range(40)])
    worker = _worker(backend, log, codec)
    await worker.start()
    await _drain(worker)
    assert worker.unflushed == 0, "every output was read back, so none is kept"
    await worker.stop()

    outputs = await _outputs(log, codec, backend.topics.events)
    assert sorted(o.meta.causation_id or "" for o in outputs) == sorted(ids)
    assert len({o.meta.event_id for o in outputs}) == 40
    assert all(o.meta.producer == "echo" for o in outputs)
    by_cause = {o.meta.causation_id: o for o in outputs}
    for record in await _all(log, backend.topics.events):
        event = await codec.decode(record.value)
        if event.type_name == "RunResumed":
            assert record.key == event.meta.run_id.encode(), "outputs are keyed by run"
            assert by_cause[event.meta.causation_id].meta.run_id == event.meta.run_id


async def test_a_restarted_worker_resumes_without_repeating(backend: Backend, log: EventLog) -> None:
    codec = backend.codec()
    await _append(backend, log, codec, [f"a{i}" for i in range(10)])
    first = _worker(backend, log, codec)
    await first.start()
    await _drain(first)
    await first.stop()
    await _append(backend, log, codec, [f"b{i}" for i in range(10)])
    second = _worker(backend, log, codec)
    await second.start()
    await _drain(second)
    await second.stop()
    reasons = sorted(o.reason for o in await _outputs(log, codec, backend.topics.events))
    assert reasons == sorted([f"echo:a{i}" for i in range(10)] + [f"echo:b{i}" for i in range(10)])


async def test_retryable_failures_back_off_then_succeed(backend: Backend, log: EventLog) -> None:
    codec = backend.codec()
    await _append(backend, log, codec, ["flaky:2", "after"])
    worker = _worker(backend, log, codec)
    await worker.start()
    await _drain(worker)
    await worker.stop()
    assert worker.stats.retries == 2
    assert sorted(o.reason for o in await _outputs(log, codec, backend.topics.events)) == [
        "echo:after",
        "echo:flaky:2",
    ]
    assert await _all(log, backend.topics.dlq) == []


async def test_every_kind_of_poison_goes_to_the_dlq_and_the_worker_keeps_going(
    backend: Backend, log: EventLog
) -> None:
    codec = backend.codec()
    topic = backend.topics.events
    await _append(backend, log, codec, ["before"])
    foreign = {
        "type": "record",
        "name": "Alien",
        "namespace": "elsewhere",
        "fields": [{"name": "x", "type": "int"}],
    }
    alien_id = await codec.registry.register(f"{topic}-elsewhere.Alien", json.dumps(foreign))
    good = await codec.encode(topic, message("run-p", "template"))
    poison = {
        DeadLetterReason.TOO_SHORT: b"\x00\x01",
        DeadLetterReason.WRONG_MAGIC_BYTE: b"\x07" + good[1:],
        DeadLetterReason.UNKNOWN_SCHEMA_ID: b"\x00" + struct.pack(">I", 987654) + good[5:],
        DeadLetterReason.UNKNOWN_EVENT_TYPE: struct.pack(">bI", 0, alien_id) + b"\x02",
        DeadLetterReason.UNDECODABLE: good[:5] + b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    }
    await log.append([OutgoingRecord(topic, b"run-p", value, partition=0) for value in poison.values()])
    await _append(backend, log, codec, ["reject", "crash", "always-flaky", "after"])

    worker = _worker(backend, log, codec)
    await worker.start()
    await _drain(worker)
    await worker.stop()

    dead = await _all(log, backend.topics.dlq)
    reasons = {r.header("dlq.reason").decode(): r for r in dead}  # type: ignore[union-attr]
    expected = set(poison) | {
        DeadLetterReason.HANDLER_REJECTED,
        DeadLetterReason.RETRIES_EXHAUSTED,
    }
    assert set(reasons) == expected
    assert len(dead) == len(poison) + 3  # reject and crash are both handler_rejected
    for reason, value in poison.items():
        record = reasons[reason]
        assert record.value == value, "the original bytes are kept"
        assert record.header("dlq.topic") == topic.encode()
        assert record.header("dlq.offset") is not None
        assert record.header("dlq.error")
    crash = [r for r in dead if b"KeyError" in (r.header("dlq.error") or b"")]
    assert len(crash) == 1
    outputs = sorted(o.reason for o in await _outputs(log, codec, topic))
    assert outputs == ["echo:after", "echo:before"], "nothing else is lost"
    assert worker.stats.dead_lettered == len(dead)


def _gated(backend: Backend, log: EventLog, codec: EventCodec, gate: Gate) -> Worker:
    return Worker(
        log, codec, gate, topics=backend.topics, batch_size=50, poll_timeout_s=0.05, sleep=_no_sleep
    )


async def _append_to(
    backend: Backend, log: EventLog, codec: EventCodec, runs_and_contents: list[tuple[str, str]]
) -> None:
    topic = backend.topics.events
    events = [message(run, content) for run, content in runs_and_contents]
    await log.append(
        [OutgoingRecord(topic, e.meta.run_id.encode(), await codec.encode(topic, e)) for e in events]
    )


async def _step_until(worker: Worker, done: object, limit: int = 400) -> None:
    for _ in range(limit):
        await worker.step()
        if await done():  # type: ignore[operator]
            return
    raise AssertionError("the worker did not get there")


async def test_a_slow_record_holds_up_only_its_own_run(backend: Backend, log: EventLog) -> None:
    """Other runs' records finish and commit while one run's handler is still busy, and the
    busy run's later record waits for it: per-run order, no run waiting for another."""
    codec = backend.codec()
    await _append_to(backend, log, codec, [("run-slow", "hold-1"), ("run-slow", "after-hold")])
    await _append_to(backend, log, codec, [(f"run-{i}", f"quick-{i}") for i in range(12)])
    gate = Gate()
    worker = _gated(backend, log, codec, gate)
    await worker.start()
    try:

        async def quick_ones_committed() -> bool:
            reasons = [o.reason for o in await _outputs(log, codec, backend.topics.events)]
            return sum(r.startswith("echo:quick-") for r in reasons) == 12

        await _step_until(worker, quick_ones_committed)
        reasons = [o.reason for o in await _outputs(log, codec, backend.topics.events)]
        assert gate.holding == 1, "the slow record is still being handled"
        assert "echo:hold-1" not in reasons and "echo:after-hold" not in reasons
        assert "after-hold" not in gate.started, "a run's next record waits for the one before it"

        gate.gate.set()

        async def all_committed() -> bool:
            return len(await _outputs(log, codec, backend.topics.events)) == 14

        await _step_until(worker, all_committed)
    finally:
        await worker.stop()
    reasons = [o.reason for o in await _outputs(log, codec, backend.topics.events)]
    assert reasons.index("echo:hold-1") < reasons.index("echo:after-hold")
    assert sorted(reasons) == sorted(
        [f"echo:quick-{i}" for i in range(12)] + ["echo:hold-1", "echo:after-hold"]
    )


async def test_a_restart_redoes_only_what_did_not_commit(backend: Backend, log: EventLog) -> None:
    """Records that finished past a slow one are remembered in the committed progress: a
    new member redoes the slow one (and what queued behind it) and nothing else."""
    codec = backend.codec()
    await _append_to(backend, log, codec, [(f"run-{i}", f"early-{i}") for i in range(5)])
    await _append_to(backend, log, codec, [("run-slow", "hold-1"), ("run-slow", "after-hold")])
    await _append_to(backend, log, codec, [(f"run-{i}", f"late-{i}") for i in range(9)])
    first_gate = Gate()
    first = _gated(backend, log, codec, first_gate)
    await first.start()

    async def others_committed() -> bool:
        return len(await _outputs(log, codec, backend.topics.events)) == 14

    await _step_until(first, others_committed)
    assert first_gate.holding == 1
    await first.stop()  # the member goes away mid-call, like a crash: nothing more commits

    second_gate = Gate()
    second_gate.gate.set()
    second = _gated(backend, log, codec, second_gate)
    await second.start()

    async def all_committed() -> bool:
        return len(await _outputs(log, codec, backend.topics.events)) >= 16

    try:
        await _step_until(second, all_committed)
        for _ in range(5):  # anything redone by mistake would show up now
            await second.step()
    finally:
        await second.stop()
    assert sorted(second_gate.started) == ["after-hold", "hold-1"], "only the uncommitted records are redone"
    reasons = [o.reason for o in await _outputs(log, codec, backend.topics.events)]
    assert len(reasons) == len(set(reasons)) == 16, "every output once"
