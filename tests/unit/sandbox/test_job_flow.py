"""Dispatch → launch → watch → observe, on a real SQLite log, with a test launcher that
runs jobs as plain subprocesses (the real sandbox is exercised by tests/e2e)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from handlers.job_watcher import JobWatcher
from handlers.policy import TenantPolicies, ToolPolicy
from handlers.tool_executor import ToolExecutor
from handlers.tools.base import NetworkPolicy, ToolRegistry, canonical_json, idempotency_key
from handlers.tools.calculator import CalculatorTool
from handlers.tools.sandbox import sandbox_tools
from projections.blobs import BlobStore
from projections.idempotency import SqliteIdempotencyLedger
from projections.run_view import RunViews
from sandbox_jobs.base import JobResult, job_id_for
from streams.backends import open_log
from streams.codec import EventCodec
from streams.envelope import caused_by, root_meta
from streams.errors import EventLogError, RetryableHandlerError
from streams.events import (
    Budget,
    BudgetCharged,
    Event,
    ObservationRecorded,
    PlanProposed,
    RunCancelled,
    SandboxJobLaunched,
    TaskSubmitted,
    ToolCallDispatched,
    ToolCallRequested,
    Usage,
)
from streams.log import EventLog, LogRecord, OutgoingRecord
from streams.registry import EmbeddedSchemaRegistry
from streams.topics import Topics
from streams.worker import HandlerContext
from tests.support.subprocess_launcher import SubprocessLauncher

pytestmark = pytest.mark.unit


@dataclass
class Rig:
    log: EventLog
    codec: EventCodec
    topics: Topics
    views: RunViews
    launcher: SubprocessLauncher
    blobs: BlobStore
    executor: ToolExecutor

    async def append(self, *events: Event) -> None:
        topic = self.topics.events
        await self.log.append(
            [OutgoingRecord(topic, e.meta.run_id.encode(), await self.codec.encode(topic, e)) for e in events]
        )

    def watcher(self, batch_size: int = 500) -> JobWatcher:
        return JobWatcher(
            self.log,
            self.codec,
            self.views,
            self.launcher,
            self.blobs,
            topics=self.topics,
            check_every_s=0,
            batch_size=batch_size,
        )

    async def events(self, run_id: str, type_name: str) -> list[Event]:
        return [e for e in await self.views.events(run_id) if e.type_name == type_name]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    log = open_log(f"sqlite://{tmp_path}/log.db")
    topics = Topics("t", 2)
    for spec in topics.specs():
        await log.create_topic(spec)
    codec = EventCodec(EmbeddedSchemaRegistry(tmp_path / "registry.db"))
    views = RunViews(log, codec, topics)
    launcher = SubprocessLauncher()
    blobs = BlobStore(tmp_path / "blobs")
    ledger = SqliteIdempotencyLedger(tmp_path / "ledger.db")
    registry = ToolRegistry([CalculatorTool(), *sandbox_tools()])
    executor = ToolExecutor(registry, ledger, blobs, ToolPolicy(), launcher=launcher, views=views)
    yield Rig(log, codec, topics, views, launcher, blobs, executor)
    await launcher.aclose()
    await ledger.aclose()
    await log.close()


def submitted(run_id: str = "run-1") -> TaskSubmitted:
    return TaskSubmitted(meta=root_meta(run_id, "acme", "test"), goal="g", budget=Budget(max_steps=5))


def call(task: TaskSubmitted, tool: str, args: dict[str, object], call_id: str = "c1") -> list[Event]:
    """A step asking for one call, and the router's dispatch of it."""
    plan = PlanProposed(
        meta=caused_by(task.meta, "planner", 0),
        step=1,
        thought="t",
        model="m",
        usage=Usage(),
        tool_call_ids=[call_id],
        based_on_event_id=task.meta.event_id,
    )
    requested = ToolCallRequested(
        meta=caused_by(plan.meta, "planner", 1 + hash(call_id) % 1000),
        step=1,
        tool_call_id=call_id,
        tool=tool,
        arguments_json=json.dumps(args),
    )
    dispatched = ToolCallDispatched(
        meta=caused_by(requested.meta, "tool-router", 0),
        step=1,
        tool_call_id=call_id,
        tool=tool,
        arguments_json=canonical_json(args),
        idempotency_key=idempotency_key(task.meta.run_id, 1, tool, args),
        timeout_ms=1000,
    )
    return [plan, requested, dispatched]


def context(event: Event) -> HandlerContext:
    record = LogRecord("t.events", 0, 0, None, b"", (), 0)
    return HandlerContext("tool-executor", record, event, 1)


async def dispatch(rig: Rig, dispatched: Event) -> list[Event]:
    """What the executor emits for a dispatch, appended to the log as its worker would."""
    emitted = list(await rig.executor.handle(dispatched, context(dispatched)))
    if emitted:
        await rig.append(*emitted)
    return emitted


async def watch_until(
    rig: Rig, watcher: JobWatcher, done: asyncio.Event | None = None, *, idle: int = 0
) -> None:
    """Step the watcher until nothing is pending (then `idle` more steps), or 20 s pass."""
    async with asyncio.timeout(20):
        while watcher.pending or not watcher._positions:
            await watcher.step()
            await asyncio.sleep(0.01)
        for _ in range(idle):
            await watcher.step()


async def test_a_dispatched_call_launches_one_job_and_records_its_output(rig: Rig) -> None:
    task = submitted()
    *head, dispatched = call(task, "run_python", {"code": "import sys; print(6 * 7); sys.exit(0)"})
    await rig.append(task, *head, dispatched)
    launched = await dispatch(rig, dispatched)
    assert [type(e) for e in launched] == [SandboxJobLaunched]
    assert isinstance(launched[0], SandboxJobLaunched) and isinstance(dispatched, ToolCallDispatched)
    assert launched[0].job_id == job_id_for(dispatched.idempotency_key)
    assert launched[0].launcher == "local"

    watcher = rig.watcher()
    await watcher.start()
    await watch_until(rig, watcher, idle=2)
    await watcher.stop()

    [observed] = await rig.events(task.meta.run_id, "ObservationRecorded")
    assert isinstance(observed, ObservationRecorded)
    assert observed.ok, observed.error
    assert observed.tool == "run_python"
    assert observed.step == 1
    data = json.loads(observed.data_json or "")
    assert data["stdout"] == "42\n"
    assert data["exit_code"] == 0
    [charge] = await rig.events(task.meta.run_id, "BudgetCharged")
    assert charge.tool_calls == 1  # type: ignore[attr-defined]
    assert rig.launcher.launches == [launched[0].job_id]
    assert rig.launcher.deleted == [launched[0].job_id], "a recorded job is freed"


async def test_a_failing_script_is_observed_as_a_failure_with_its_exit_code(rig: Rig) -> None:
    task = submitted()
    *head, dispatched = call(task, "run_shell", {"command": "echo oops >&2; exit 3"})
    await rig.append(task, *head, dispatched)
    await dispatch(rig, dispatched)
    watcher = rig.watcher()
    await watcher.start()
    await watch_until(rig, watcher)
    await watcher.stop()
    [observed] = await rig.events(task.meta.run_id, "ObservationRecorded")
    assert isinstance(observed, ObservationRecorded)
    assert not observed.ok
    assert observed.error == "exited with code 3"
    assert json.loads(observed.data_json or "")["stderr"] == "oops\n"


async def test_a_redelivered_dispatch_launches_nothing_new(rig: Rig) -> None:
    task = submitted()
    *head, dispatched = call(task, "run_python", {"code": "print(1)"})
    await rig.append(task, *head, dispatched)
    first = await rig.executor.handle(dispatched, context(dispatched))
    again = await rig.executor.handle(dispatched, context(dispatched))  # the batch was redone
    assert [(e.meta.event_id, e.job_id) for e in first] == [(e.meta.event_id, e.job_id) for e in again]  # type: ignore[attr-defined]
    assert len(rig.launcher.launches) == 1
    await rig.append(*first)
    watcher = rig.watcher()
    await watcher.start()
    await watch_until(rig, watcher)
    await watcher.stop()
    # Once observed (and the job deleted), a dispatch delivered once more does nothing at all.
    assert await rig.executor.handle(dispatched, context(dispatched)) == []
    assert len(rig.launcher.launches) == 1
    assert len(await rig.events(task.meta.run_id, "ObservationRecorded")) == 1


async def test_a_restarted_watcher_reattaches_and_never_records_twice(rig: Rig) -> None:
    task = submitted()
    plan, req_slow, disp_slow = call(task, "run_shell", {"command": "sleep 1.5; echo slow"}, "slow")
    _, req_fast, disp_fast = call(task, "run_shell", {"command": "echo fast"}, "fast")
    await rig.append(task, plan, req_slow, req_fast, disp_slow, disp_fast)
    await dispatch(rig, disp_slow)
    await dispatch(rig, disp_fast)

    first = rig.watcher()
    await first.start()
    async with asyncio.timeout(20):
        while first.recorded == 0:
            await first.step()
            await asyncio.sleep(0.01)
    assert first.pending == 1, "the slow job still runs"
    await first.stop()  # dies; its resume point is still at the slow launch, before the fast one

    # One record per step: it checks the fast job (gone from the launcher once recorded) after
    # re-reading its launch and before reading its observation; only the log says it is done.
    second = rig.watcher(batch_size=1)
    await second.start()
    await watch_until(rig, second, idle=3)
    await second.stop()

    observed = await rig.events(task.meta.run_id, "ObservationRecorded")
    assert sorted(e.tool_call_id for e in observed) == ["fast", "slow"]  # type: ignore[attr-defined]
    slow = next(e for e in observed if e.tool_call_id == "slow")  # type: ignore[attr-defined]
    assert isinstance(slow, ObservationRecorded) and slow.ok
    assert json.loads(slow.data_json or "")["stdout"] == "slow\n"
    assert second.recorded == 1
    assert len(await rig.events(task.meta.run_id, "BudgetCharged")) == 2
    assert len(rig.launcher.launches) == 2


async def test_cancelling_the_run_stops_its_job_and_records_no_success(rig: Rig) -> None:
    task = submitted()
    *head, dispatched = call(task, "run_shell", {"command": "sleep 30; echo never"})
    await rig.append(task, *head, dispatched)
    [launched] = await dispatch(rig, dispatched)
    watcher = rig.watcher()
    await watcher.start()
    await watcher.step()
    assert watcher.pending == 1
    await rig.append(RunCancelled(meta=caused_by(task.meta, "person", 0), reason="stop", requested_by="me"))
    await watch_until(rig, watcher)
    await watcher.stop()
    assert isinstance(launched, SandboxJobLaunched)
    assert rig.launcher.cancels == [launched.job_id]
    [observed] = await rig.events(task.meta.run_id, "ObservationRecorded")
    assert isinstance(observed, ObservationRecorded)
    assert not observed.ok
    assert observed.error is not None and "the run is cancelled" in observed.error
    assert "never" not in (observed.data_json or "")


async def test_a_dispatch_for_an_ended_run_launches_nothing(rig: Rig) -> None:
    task = submitted()
    *head, dispatched = call(task, "run_python", {"code": "print(1)"})
    await rig.append(task, *head, RunCancelled(meta=caused_by(task.meta, "p", 0), requested_by="me"))
    [observed, _] = await rig.executor.handle(dispatched, context(dispatched))
    assert isinstance(observed, ObservationRecorded)
    assert not observed.ok
    assert observed.error == "not launched: the run is cancelled"
    assert rig.launcher.launches == []


async def test_a_refused_launch_is_observed_as_a_failure(rig: Rig) -> None:
    task = submitted()
    *head, dispatched = call(task, "run_python", {"code": "print(1)"})
    await rig.append(task, *head)
    rig.launcher.refuse = "bubblewrap is not installed"
    [observed, charge] = await rig.executor.handle(dispatched, context(dispatched))
    assert isinstance(observed, ObservationRecorded)
    assert not observed.ok
    assert observed.error == "run_python could not be launched: bubblewrap is not installed"
    assert charge.tool_calls == 1  # type: ignore[attr-defined]


async def test_without_a_launcher_sandboxed_tools_fail_clearly(rig: Rig) -> None:
    rig.executor.launcher = None
    task = submitted()
    *head, dispatched = call(task, "run_shell", {"command": "true"})
    await rig.append(task, *head)
    [observed, _] = await rig.executor.handle(dispatched, context(dispatched))
    assert isinstance(observed, ObservationRecorded)
    assert observed.error == "run_shell needs a sandbox launcher and none is configured"


async def test_in_process_tools_still_run_in_the_executor(rig: Rig) -> None:
    task = submitted()
    *head, dispatched = call(task, "calculator", {"expression": "2 + 3"})
    await rig.append(task, *head)
    [observed, _] = await rig.executor.handle(dispatched, context(dispatched))
    assert isinstance(observed, ObservationRecorded)
    assert observed.ok and json.loads(observed.data_json or "")["result"] == 5
    assert rig.launcher.launches == []


async def test_a_job_the_launcher_lost_is_recorded_as_failed(rig: Rig) -> None:
    task = submitted()
    *head, dispatched = call(task, "run_shell", {"command": "sleep 5"})
    await rig.append(task, *head, dispatched)
    [launched] = await dispatch(rig, dispatched)
    assert isinstance(launched, SandboxJobLaunched)
    await rig.launcher.delete(launched.job_id)
    watcher = rig.watcher()
    await watcher.start()
    await watch_until(rig, watcher)
    await watcher.stop()
    [observed] = await rig.events(task.meta.run_id, "ObservationRecorded")
    assert isinstance(observed, ObservationRecorded)
    assert not observed.ok
    assert observed.error == "the job ended without an exit code: the job is gone from the launcher"


async def test_a_launch_appended_after_the_run_ended_still_gets_its_job_stopped(rig: Rig) -> None:
    # The executor checked the run, the run was cancelled, then the launch was committed.
    task = submitted()
    *head, dispatched = call(task, "run_shell", {"command": "sleep 30"})
    await rig.append(task, *head, dispatched)
    launched = await rig.executor.handle(dispatched, context(dispatched))
    await rig.append(RunCancelled(meta=caused_by(task.meta, "person", 0), requested_by="me"), *launched)
    watcher = rig.watcher()
    await watcher.start()
    await watch_until(rig, watcher)
    await watcher.stop()
    assert rig.launcher.cancels == [launched[0].job_id]  # type: ignore[attr-defined]
    [observed] = await rig.events(task.meta.run_id, "ObservationRecorded")
    assert isinstance(observed, ObservationRecorded) and not observed.ok


async def test_an_observation_read_before_the_check_closes_the_launch(rig: Rig) -> None:
    task = submitted()
    *head, dispatched = call(task, "run_shell", {"command": "echo once"})
    await rig.append(task, *head, dispatched)
    [launched] = await dispatch(rig, dispatched)
    assert isinstance(launched, SandboxJobLaunched)
    # Recorded by a previous owner of the partition, whose resume point stayed behind.
    await rig.append(
        ObservationRecorded(
            meta=caused_by(launched.meta, "sandbox-watcher", 0),
            step=1,
            tool_call_id="c1",
            tool="run_shell",
            ok=True,
        )
    )
    watcher = JobWatcher(
        rig.log, rig.codec, rig.views, rig.launcher, rig.blobs, topics=rig.topics, check_every_s=3600
    )
    await watcher.start()
    watcher._last_check = float("inf")  # reads, never checks
    await watcher.step()
    assert watcher.pending == 0
    await watcher.stop()
    assert rig.launcher.deleted == [launched.job_id]
    assert len(await rig.events(task.meta.run_id, "ObservationRecorded")) == 1


async def test_undecodable_records_are_left_to_the_dead_letter_path(rig: Rig) -> None:
    await rig.log.append([OutgoingRecord(rig.topics.events, b"run-x", b"not avro")])
    watcher = rig.watcher()
    await watcher.start()
    assert await watcher.step() == 1
    assert watcher.pending == 0
    await watcher.stop()


async def test_a_failed_commit_is_retried_from_the_committed_offsets(rig: Rig) -> None:
    task = submitted()
    *head, dispatched = call(task, "run_shell", {"command": "echo hi"})
    await rig.append(task, *head, dispatched)
    await dispatch(rig, dispatched)
    watcher = rig.watcher()
    await watcher.start()
    consumer = watcher._consumer
    assert consumer is not None
    real_commit = consumer.commit
    failures: list[int] = []

    async def commit_failing_once(*args: object) -> None:
        if not failures:
            failures.append(1)
            raise EventLogError("partitions were reassigned mid-batch", retryable=True)
        await real_commit(*args)  # type: ignore[arg-type]

    consumer.commit = commit_failing_once  # type: ignore[method-assign]
    async with asyncio.timeout(20):
        while not await rig.events(task.meta.run_id, "ObservationRecorded"):
            await watcher.step()
            await asyncio.sleep(0.01)
    assert failures == [1]
    consumer.commit = real_commit  # type: ignore[method-assign]
    await watcher.stop()
    assert len(await rig.events(task.meta.run_id, "ObservationRecorded")) == 1


async def test_a_permanent_log_error_stops_the_watcher(rig: Rig) -> None:
    watcher = rig.watcher()
    await watcher.start()
    consumer = watcher._consumer
    assert consumer is not None

    async def broken_poll(*args: object) -> list[LogRecord]:
        raise EventLogError("disk full")

    consumer.poll = broken_poll  # type: ignore[method-assign]
    with pytest.raises(EventLogError, match="disk full"):
        await watcher.step()
    await watcher.stop()


async def test_a_job_that_cannot_be_deleted_is_still_recorded(rig: Rig) -> None:
    async def refuse(job_id: str) -> None:
        raise OSError("busy")

    rig.launcher.delete = refuse  # type: ignore[method-assign]
    task = submitted()
    *head, dispatched = call(task, "run_shell", {"command": "echo kept"})
    await rig.append(task, *head, dispatched)
    await dispatch(rig, dispatched)
    watcher = rig.watcher()
    await watcher.start()
    await watch_until(rig, watcher)
    await watcher.stop()
    [observed] = await rig.events(task.meta.run_id, "ObservationRecorded")
    assert isinstance(observed, ObservationRecorded) and observed.ok


async def test_arguments_the_router_would_refuse_fail_without_a_launch(rig: Rig) -> None:
    task = submitted()
    *head, dispatched = call(task, "run_shell", {"command": "true", "timeout_s": 10_000})
    await rig.append(task, *head)
    [observed, _] = await rig.executor.handle(dispatched, context(dispatched))
    assert isinstance(observed, ObservationRecorded)
    assert observed.error == "run_shell: timeout_s must be in (0, 300]"
    assert rig.launcher.launches == []


async def test_an_unreachable_launcher_is_retried(rig: Rig) -> None:
    async def unreachable(spec: object) -> None:
        raise ConnectionRefusedError("connection refused")

    rig.launcher.launch = unreachable  # type: ignore[method-assign]
    task = submitted()
    *head, dispatched = call(task, "run_shell", {"command": "true"})
    await rig.append(task, *head)
    with pytest.raises(RetryableHandlerError, match="connection refused"):
        await rig.executor.handle(dispatched, context(dispatched))


async def test_jobs_get_the_allowlist_only_from_a_launcher_with_egress_control(rig: Rig) -> None:
    rig.executor.policies = TenantPolicies.of(
        ToolPolicy(network=NetworkPolicy(allowed_hosts=("example.org", "169.254.169.254")))
    )
    task = submitted()
    *head, dispatched = call(task, "run_shell", {"command": "true"})
    await rig.append(task, *head)
    [launched] = await rig.executor.handle(dispatched, context(dispatched))
    assert isinstance(launched, SandboxJobLaunched)
    assert rig.launcher.jobs[launched.job_id].spec.allowed_hosts == ("example.org",)

    rig.executor.job_egress = False
    *_, other = call(task, "run_shell", {"command": "false"}, "c2")
    [launched] = await rig.executor.handle(other, context(other))
    assert isinstance(launched, SandboxJobLaunched)
    assert rig.launcher.jobs[launched.job_id].spec.allowed_hosts == ()


async def test_runs_with_the_same_call_ids_get_their_own_observations(rig: Rig) -> None:
    tasks = [submitted("run-a"), submitted("run-b")]
    for n, task in enumerate(tasks):
        *head, dispatched = call(task, "run_shell", {"command": f"echo {n}"})
        await rig.append(task, *head, dispatched)
        await dispatch(rig, dispatched)
    watcher = rig.watcher()
    await watcher.start()
    await watch_until(rig, watcher)
    await watcher.stop()
    for n, task in enumerate(tasks):
        [observed] = await rig.events(task.meta.run_id, "ObservationRecorded")
        assert isinstance(observed, ObservationRecorded)
        assert json.loads(observed.data_json or "")["stdout"] == f"{n}\n"


async def test_a_result_recorded_elsewhere_after_the_launch_was_read_is_not_recorded_again(rig: Rig) -> None:
    task = submitted()
    *head, dispatched = call(task, "run_shell", {"command": "echo hi"})
    await rig.append(task, *head, dispatched)
    [launched] = await dispatch(rig, dispatched)
    assert isinstance(launched, SandboxJobLaunched)
    watcher = rig.watcher(batch_size=1)
    watcher.check_every_s = 3600
    await watcher.start()
    while watcher.pending == 0:
        await watcher.step()
    job = rig.launcher.jobs[launched.job_id].task
    assert job is not None
    await asyncio.wait_for(job, 20)  # the job has finished
    # Meanwhile a previous owner of the partition recorded it; this watcher checks the job
    # before it has read that observation.
    filler = BudgetCharged(meta=caused_by(task.meta, "planner", 7), step=1, usage=Usage(), source="model")
    elsewhere = ObservationRecorded(
        meta=caused_by(launched.meta, "sandbox-watcher", 0),
        step=1,
        tool_call_id="c1",
        tool="run_shell",
        ok=True,
    )
    await rig.append(filler, elsewhere)
    watcher.check_every_s = 0
    await watcher.step()
    assert watcher.pending == 0
    assert watcher.recorded == 0
    await watcher.stop()
    assert len(await rig.events(task.meta.run_id, "ObservationRecorded")) == 1


async def test_a_stop_that_fails_is_tried_again(rig: Rig) -> None:
    task = submitted()
    *head, dispatched = call(task, "run_shell", {"command": "sleep 30"})
    await rig.append(task, *head, dispatched)
    await dispatch(rig, dispatched)
    real_cancel = rig.launcher.cancel
    attempts: list[str] = []

    async def flaky_cancel(job_id: str) -> None:
        attempts.append(job_id)
        if len(attempts) == 1:
            raise OSError("launcher busy")
        await real_cancel(job_id)

    rig.launcher.cancel = flaky_cancel  # type: ignore[method-assign]
    await rig.append(RunCancelled(meta=caused_by(task.meta, "person", 0), requested_by="me"))
    watcher = rig.watcher()
    await watcher.start()
    await watch_until(rig, watcher)
    await watcher.stop()
    assert len(attempts) == 2
    [observed] = await rig.events(task.meta.run_id, "ObservationRecorded")
    assert isinstance(observed, ObservationRecorded) and not observed.ok


async def test_a_launcher_that_cannot_answer_is_asked_again(rig: Rig) -> None:
    task = submitted()
    *head, dispatched = call(task, "run_shell", {"command": "echo later"})
    await rig.append(task, *head, dispatched)
    await dispatch(rig, dispatched)
    real_result = rig.launcher.result
    failures: list[str] = []

    async def flaky_result(job_id: str) -> JobResult | None:
        if not failures:
            failures.append(job_id)
            raise OSError("connection reset")
        return await real_result(job_id)

    rig.launcher.result = flaky_result  # type: ignore[method-assign]
    watcher = rig.watcher()
    await watcher.start()
    await watch_until(rig, watcher)
    await watcher.stop()
    assert len(failures) == 1
    [observed] = await rig.events(task.meta.run_id, "ObservationRecorded")
    assert isinstance(observed, ObservationRecorded) and observed.ok
