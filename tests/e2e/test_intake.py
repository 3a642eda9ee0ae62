"""The task intake on every log backend: tasks topic in, one run per distinct submission out."""

from __future__ import annotations

import uuid

from handlers.intake import TaskIntake, run_id_for
from projections.run_view import RunViews
from streams.envelope import root_meta
from streams.events import Budget, RunResumed, TaskSubmitted
from streams.log import EventLog, OutgoingRecord
from streams.worker import Worker
from tests.support.backends import Backend


def task(tenant: str, goal: str, key: str | None, *, run_id: str = "chosen-by-upstream") -> TaskSubmitted:
    return TaskSubmitted(
        meta=root_meta(run_id, tenant, "upstream"),
        goal=goal,
        budget=Budget(max_steps=3),
        upstream_idempotency_key=key,
        submitted_by="erp",
    )


async def publish(
    log: EventLog, backend: Backend, codec_topic: str, tasks: list[TaskSubmitted], codec
) -> None:
    records = [
        OutgoingRecord(
            codec_topic,
            t.upstream_idempotency_key.encode() if t.upstream_idempotency_key else None,
            await codec.encode(codec_topic, t),
        )
        for t in tasks
    ]
    await log.append(records)


async def drain(worker: Worker) -> None:
    while await worker.step():
        pass


async def started_runs(log: EventLog, backend: Backend) -> list[TaskSubmitted]:
    codec = backend.codec()
    found = []
    topic = backend.topics.events
    for partition in range(await log.partitions(topic)):
        for record in await log.read(topic, partition, 0, 10_000):
            event = await codec.decode(record.value)
            assert isinstance(event, TaskSubmitted)
            assert record.key == event.meta.run_id.encode(), "runs are keyed by run id"
            found.append(event)
    return found


async def test_each_distinct_submission_starts_one_run(backend: Backend) -> None:
    async with backend.open() as log:
        for spec in backend.topics.specs():
            await log.create_topic(spec)
        codec = backend.codec()
        views = RunViews(log, codec, backend.topics)
        worker = Worker(
            log,
            codec,
            TaskIntake(log, codec, backend.topics, views),
            topics=backend.topics,
            input_topics=[backend.topics.tasks],
            poll_timeout_s=0.5,
        )
        await worker.start()
        try:
            tasks = backend.topics.tasks
            # Duplicates within one batch, the same key in two tenants, and two without a key.
            await publish(
                log,
                backend,
                tasks,
                [
                    task("acme", "ship order 17", "order-17"),
                    task("acme", "ship order 17", "order-17"),
                    task("globex", "ship order 17", "order-17"),
                    task("acme", "no key", None),
                    task("acme", "no key", None),
                ],
                codec,
            )
            await drain(worker)
            # A late duplicate, after the run exists, in a batch of its own.
            await publish(log, backend, tasks, [task("acme", "ship order 17", "order-17")], codec)
            await drain(worker)
            runs = await started_runs(log, backend)
        finally:
            await worker.stop()
    by_run = {r.meta.run_id: r for r in runs}
    assert len(runs) == len(by_run) == 4
    keyed = run_id_for("acme", "order-17", "ignored")
    assert by_run[keyed].goal == "ship order 17" and by_run[keyed].meta.tenant_id == "acme"
    assert run_id_for("globex", "order-17", "ignored") in by_run
    assert sorted(r.goal for r in runs) == ["no key", "no key", "ship order 17", "ship order 17"]
    first = by_run[keyed]
    assert first.meta.producer == "intake" and first.meta.correlation_id == keyed
    assert first.upstream_idempotency_key == "order-17" and first.submitted_by == "erp"
    assert "chosen-by-upstream" not in by_run, "submitters never choose run ids"


async def test_invalid_tasks_are_dead_lettered_and_start_nothing(backend: Backend) -> None:
    async with backend.open() as log:
        for spec in backend.topics.specs():
            await log.create_topic(spec)
        codec = backend.codec()
        intake = TaskIntake(log, codec, backend.topics, RunViews(log, codec, backend.topics))
        worker = Worker(
            log, codec, intake, topics=backend.topics, input_topics=[backend.topics.tasks], poll_timeout_s=0.5
        )
        await worker.start()
        try:
            key = f"k-{uuid.uuid4().hex[:6]}"
            # An empty goal is refused; a valid task with the same key afterwards still starts its run.
            await publish(
                log,
                backend,
                backend.topics.tasks,
                [task("acme", "  ", key), task("acme", "real", key)],
                codec,
            )
            await publish(log, backend, backend.topics.tasks, [task("", "no tenant", None)], codec)
            await drain(worker)
            runs = await started_runs(log, backend)
            dead = await log.read(backend.topics.dlq, 0, 0, 100)
        finally:
            await worker.stop()
    assert [r.goal for r in runs] == ["real"]
    reasons = sorted(r.header("dlq.error").decode() for r in dead)
    assert reasons == ["HandlerRejected: a task needs a goal", "HandlerRejected: a task needs a tenant_id"]


async def test_odd_records_and_keys_never_start_a_second_run(backend: Backend) -> None:
    async with backend.open() as log:
        for spec in backend.topics.specs():
            await log.create_topic(spec)
        codec = backend.codec()
        intake = TaskIntake(log, codec, backend.topics, RunViews(log, codec, backend.topics))
        worker = Worker(
            log, codec, intake, topics=backend.topics, input_topics=[backend.topics.tasks], poll_timeout_s=0.5
        )
        await worker.start()
        tasks = backend.topics.tasks

        async def record(key: bytes | None, event: object) -> OutgoingRecord:
            return OutgoingRecord(tasks, key, await codec.encode(tasks, event))  # type: ignore[arg-type]

        try:
            other = RunResumed(meta=root_meta("x", "acme", "upstream"), reason="not a task")
            await log.append(
                [
                    OutgoingRecord(tasks, b"k2", b"not avro at all"),  # dead-lettered, skipped by the scan
                    await record(b"k2", other),  # not a task: the intake ignores it
                    await record(b"k2", task("acme", "two", "k2")),
                    await record(None, task("acme", "three", "k3")),  # producers that set no record key
                    await record(None, task("acme", "three", "k3")),
                ]
            )
            await drain(worker)
            # A copy keyed differently lands apart from the first: the events topic still knows the run.
            await log.append([await record(b"somewhere-else", task("acme", "two", "k2"))])
            await drain(worker)
            runs = await started_runs(log, backend)
        finally:
            await worker.stop()
    assert sorted(r.goal for r in runs) == ["three", "two"]
    assert {r.meta.run_id for r in runs} == {run_id_for("acme", "k2", ""), run_id_for("acme", "k3", "")}
