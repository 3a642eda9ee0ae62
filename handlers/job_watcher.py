"""The job watcher: turns finished sandboxed jobs into observations, exactly once.

A sandboxed job may run for minutes, so nothing waits for it: the tool executor launches
it and emits SandboxJobLaunched, and this watcher, a member of its own consumer group on
the events topic, follows the launches it has not seen observed, asks the launcher how
they are doing, and appends ObservationRecorded + BudgetCharged when one finishes.

Why it is crash-proof:

- Its resume point (the group's committed offset of a partition) never moves past a
  launch that is still pending, so a restarted watcher re-reads every launch it had not
  recorded yet and reattaches to the job, which kept running without it.
- A re-read launch may already have its observation (the watcher died after appending
  it); before appending, the watcher reads the run from the log and skips calls that are
  observed. The observation and the new resume point commit in one atomic step.
- One watcher per partition: consumer-group membership keeps two from racing. When its
  partitions change (a rebalance), or a commit fails because they changed mid-step, the
  watcher forgets everything and re-reads from the committed offsets.

A run that ends (cancelled, aborted, failed, completed) gets its in-flight jobs stopped.
Their observation is recorded with ok=false: the call is closed on the log for the audit,
but a job of a dead run is never reported as a success.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from handlers.observations import bounded
from handlers.tools.sandbox import job_outcome
from projections.blobs import BlobStore
from projections.run_view import RunView, RunViews
from sandbox_jobs.base import JobNotFound, JobResult, SandboxLauncher
from streams.codec import EventCodec
from streams.envelope import caused_by
from streams.errors import AgentstreamError, PoisonEvent
from streams.events import BudgetCharged, Event, ObservationRecorded, SandboxJobLaunched, Usage
from streams.log import EventLog, GroupConsumer, LogRecord, OutgoingRecord, TopicPartition
from streams.topics import Topics

log = logging.getLogger(__name__)

_ENDS_RUN = frozenset({"RunCompleted", "RunFailed", "RunAborted", "RunCancelled"})
_WATCHED = frozenset({"SandboxJobLaunched", "ObservationRecorded"}) | _ENDS_RUN


@dataclass
class _Launch:
    """A launch read from the log whose observation the watcher has not seen yet."""

    event: SandboxJobLaunched
    position: TopicPartition
    offset: int
    run_ended: bool = False
    stop_requested: bool = False


class JobWatcher:
    """Follows launched sandbox jobs and records each one's result as an observation."""

    name = "sandbox-watcher"

    def __init__(
        self,
        log_: EventLog,
        codec: EventCodec,
        views: RunViews,
        launcher: SandboxLauncher,
        blobs: BlobStore,
        *,
        topics: Topics | None = None,
        member: str = "0",
        poll_timeout_s: float = 0.05,
        check_every_s: float = 0.2,
        batch_size: int = 500,
    ) -> None:
        self.log = log_
        self.codec = codec
        self.views = views
        self.launcher = launcher
        self.blobs = blobs
        self.topics = topics or Topics()
        self.group = f"{self.topics.prefix}.{self.name}"
        self.member = member
        self.poll_timeout_s = poll_timeout_s
        self.check_every_s = check_every_s
        self.batch_size = batch_size
        self.recorded = 0
        """Observations this watcher appended (for tests and metrics)."""
        self._consumer: GroupConsumer | None = None
        self._pending: dict[tuple[str, str], _Launch] = {}  # by run id and tool call id
        self._positions: dict[TopicPartition, int] = {}  # next offset after what was read
        self._committed: dict[TopicPartition, int] = {}
        self._last_check = 0.0
        self._assigned: frozenset[TopicPartition] | None = None

    @property
    def pending(self) -> int:
        """How many launched jobs are waiting for their result."""
        return len(self._pending)

    async def start(self) -> None:
        self._consumer = self.log.consumer(self.group, [self.topics.events], member=self.member)
        await self._consumer.start()
        self._assigned = self._consumer.assigned()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        self._forget()

    async def step(self) -> int:
        """Read what was appended, then check pending jobs; returns how much it did."""
        assert self._consumer is not None, "start() the watcher first"
        try:
            records = await self._consumer.poll(self.batch_size, self.poll_timeout_s)
            assigned = self._consumer.assigned()
            if assigned != self._assigned:
                # Partitions moved to or from another member: what this watcher knows may
                # be another's now, so it starts over from the committed offsets.
                self._forget()
                self._assigned = assigned
                await self._consumer.rewind()
                return 0
            for record in records:
                await self._read(record)
            recorded = 0
            if self._pending and time.monotonic() - self._last_check >= self.check_every_s:
                self._last_check = time.monotonic()
                for launch in list(self._pending.values()):
                    recorded += await self._check(launch)
            if records and not recorded:
                await self._commit([])
            return len(records) + recorded
        except AgentstreamError as exc:
            if not exc.retryable:
                raise
            # Partitions may have moved to another member: start over from what is committed.
            log.warning("%s: %s; re-reading from the committed offsets", self.group, exc)
            self._forget()
            await self._consumer.rewind()
            return 0

    def _forget(self) -> None:
        self._pending.clear()
        self._positions.clear()
        self._committed.clear()

    async def _read(self, record: LogRecord) -> None:
        self._positions[record.position] = record.offset + 1
        try:
            if await self.codec.type_of(record.value) not in _WATCHED:
                return
            event = await self.codec.decode(record.value)
        except PoisonEvent:
            return  # the handlers' workers dead-letter it
        if isinstance(event, SandboxJobLaunched):
            await self._launched(event, record)
        elif isinstance(event, ObservationRecorded):
            if (done := self._pending.pop((event.meta.run_id, event.tool_call_id), None)) is not None:
                await self._forget_job(done.event.job_id)
        elif event.type_name in _ENDS_RUN:
            for launch in self._pending.values():
                if launch.event.meta.run_id == event.meta.run_id:
                    launch.run_ended = True

    async def _launched(self, event: SandboxJobLaunched, record: LogRecord) -> None:
        key = (event.meta.run_id, event.tool_call_id)
        if key in self._pending:
            return  # a duplicate launch of the same call: the same job
        view = await self.views.view(event.meta.run_id)
        call = view.call(event.tool_call_id)
        if call is not None and call.status == "observed":
            await self._forget_job(event.job_id)  # re-read after its result was recorded
            return
        # A run may have ended before this launch was committed (the executor raced a
        # cancel): its end is then behind this launch in the log, seen only in the view.
        self._pending[key] = _Launch(event, record.position, record.offset, run_ended=view.terminal)

    async def _stop(self, launch: _Launch) -> None:
        try:
            await self.launcher.cancel(launch.event.job_id)
        except JobNotFound:
            pass
        except Exception as exc:  # tried again at the next check
            log.warning("could not stop sandbox job %s: %s", launch.event.job_id, exc)
            return
        launch.stop_requested = True

    async def _check(self, launch: _Launch) -> int:
        """Record the job's result if it has finished; returns 1 if it recorded one."""
        job_id = launch.event.job_id
        if launch.run_ended and not launch.stop_requested:
            await self._stop(launch)
        try:
            result = await self.launcher.result(job_id)
        except JobNotFound:
            result = JobResult(job_id, "failed", None, "", "", reason="the job is gone from the launcher")
        except Exception as exc:  # the launcher's backend is unreachable for now: ask again later
            log.warning("could not get the state of sandbox job %s: %s", job_id, exc)
            return 0
        if result is None:
            return 0
        view = await self.views.view(launch.event.meta.run_id)
        call = view.call(launch.event.tool_call_id)
        del self._pending[launch.event.meta.run_id, launch.event.tool_call_id]
        if call is not None and call.status == "observed":
            await self._commit([])  # recorded before a crash or by someone else: never twice
            await self._forget_job(job_id)
            return 0
        await self._commit(self._observation(launch, view, result))
        self.recorded += 1
        await self._forget_job(job_id)
        return 1

    def _observation(self, launch: _Launch, view: RunView, result: JobResult) -> list[Event]:
        launched = launch.event
        call = view.call(launched.tool_call_id)
        step = next(
            (s.step for s in view.steps if any(c.tool_call_id == launched.tool_call_id for c in s.calls)),
            view.step,
        )
        outcome = job_outcome(result, run_status=view.status)
        data_json, truncated, handle = bounded(outcome.data, self.blobs)
        return [
            ObservationRecorded(
                meta=caused_by(launched.meta, self.name, 0),
                step=step,
                tool_call_id=launched.tool_call_id,
                tool=call.tool if call is not None else "",
                ok=outcome.ok,
                data_json=data_json,
                error=outcome.error,
                truncated=truncated,
                blob_handle=handle,
                duration_ms=result.duration_ms,
            ),
            BudgetCharged(
                meta=caused_by(launched.meta, self.name, 1),
                step=step,
                usage=Usage(),
                tool_calls=1,
                source="tool",
            ),
        ]

    async def _commit(self, outputs: list[Event]) -> None:
        """Append ``outputs`` and move each partition's resume point as far as is safe: to
        its oldest pending launch, or past everything read when none is pending."""
        assert self._consumer is not None
        resume = dict(self._positions)
        for launch in self._pending.values():
            resume[launch.position] = min(resume[launch.position], launch.offset)
        moved = {tp: offset for tp, offset in resume.items() if self._committed.get(tp) != offset}
        if not outputs and not moved:
            return
        topic = self.topics.events
        records = [
            OutgoingRecord(topic, e.meta.run_id.encode(), await self.codec.encode(topic, e)) for e in outputs
        ]
        await self._consumer.commit(records, moved)
        self._committed.update(moved)

    async def _forget_job(self, job_id: str) -> None:
        """Free what a recorded job holds; it is never needed again."""
        try:
            await self.launcher.delete(job_id)
        except Exception as exc:  # cleanup only: the observation is already safe
            log.warning("could not delete sandbox job %s: %s", job_id, exc)
