"""The worker runtime: hosts one handler over a consumer group, exactly once, and never
lets one run wait for another.

A handler declares the event types it consumes and returns the events to emit. The
worker reads records, hands each one it consumes to its handler, and commits a record's
outputs together with the group's progress in one atomic step, as soon as the handler
returns. Records of one run (one key) are handled one at a time, in log order; records
of different runs are handled concurrently, so a model call that takes a minute holds up
only its own run: other runs' records finish and commit around it. The group's progress
is therefore an offset plus the records done out of order past it (`streams.progress`),
and a worker killed at any instant redoes exactly the records whose outputs did not
commit: outputs are never lost and never appended twice.

Records that can never be processed (not our wire format, unknown schema id, an event
type we do not know, a corrupt body, a handler that rejects the event or keeps failing)
are appended to the dead-letter topic, in the same commit, with the original bytes and
the reason in headers; the worker keeps going.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from streams.codec import DeadLetterReason, EventCodec
from streams.envelope import caused_by
from streams.errors import AgentstreamError, PoisonEvent
from streams.events import Event, EventMeta
from streams.log import EventLog, GroupConsumer, LogRecord, OutgoingRecord, TopicPartition
from streams.topics import Topics

log = logging.getLogger(__name__)

EVENT_ID_HEADER = "agentstream.event_id"
"""Header of every record a worker appends: the event's id, so the worker recognises its
own outputs when it reads them back."""


class HandlerContext:
    """What a handler knows besides the event: where it came from, and how to stamp outputs."""

    def __init__(
        self,
        handler: str,
        record: LogRecord,
        event: Event,
        attempt: int,
        uncommitted: Sequence[Event] = (),
        consumed_through: int | None = None,
    ) -> None:
        self.handler = handler
        self.record = record
        self.event = event
        self.attempt = attempt
        self.uncommitted = uncommitted
        """Events this handler emitted for the same run that its worker has not read back
        from the log yet: a handler reading the run's history must see them."""
        self.consumed_through = consumed_through
        """The offset up to which the worker has read the record's partition: with
        `uncommitted`, a view of the log up to here holds everything the handler emitted.
        None when the log must be read to its end (just after a restart)."""
        self._emitted = 0

    def meta(self, *, run_id: str | None = None) -> EventMeta:
        """Meta for the next output event: caused by the input, with a deterministic id."""
        meta = caused_by(self.event.meta, self.handler, self._emitted, run_id=run_id)
        self._emitted += 1
        return meta


class Handler(ABC):
    """A stateless reactor: consumes some event types, returns events to emit.

    Raise `RetryableHandlerError` (or any error with `retryable=True`) for transient
    failures; anything else dead-letters the event. Handlers must not keep state between
    events: everything they need comes from the event, the log or a projection.
    """

    name: str
    """Names the consumer group (`<prefix>.<name>`) and the `producer` of outputs."""
    consumes: frozenset[str]
    """Event type names this handler receives; others are skipped without decoding."""
    ordered: bool = True
    """Handle a run's events one at a time, in log order. A handler whose events are
    independent of each other (a tool worker) sets False to handle them concurrently."""

    @abstractmethod
    async def handle(self, event: Event, ctx: HandlerContext) -> Sequence[Event]:
        """React to one event; return the events to emit (possibly none)."""

    def gave_up(self, event: Event, ctx: HandlerContext, error: str) -> Sequence[Event]:
        """Events to emit when `event` is dead-lettered after `handle` failed for good.

        The default emits nothing. A handler a run cannot progress without (the planner,
        say) returns a RunFailed here, so the run ends visibly instead of waiting forever.
        """
        return ()


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for retryable failures: exponential with full jitter, bounded attempts."""

    max_attempts: int = 5
    base_delay_s: float = 0.05
    max_delay_s: float = 5.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1)))


@dataclass
class WorkerStats:
    """Counters a worker keeps about itself."""

    batches: int = 0
    records: int = 0
    handled: int = 0
    emitted: int = 0
    dead_lettered: int = 0
    retries: int = 0
    commit_failures: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)


@dataclass
class _Done:
    """A handled record whose outputs wait for the next commit."""

    position: TopicPartition
    offset: int
    key: object
    outputs: list[OutgoingRecord]
    emitted: int
    """How many of the key's unflushed events this record added (see `Worker._unflushed`)."""


@dataclass
class _PartitionState:
    """What the worker knows of one partition it reads."""

    next_offset: int
    """Every record below it is done and committed."""
    done: set[int]
    """Done records at or after `next_offset` (committed, or in the commit under way)."""
    open: set[int] = field(default_factory=set)
    """Read records not yet done: queued, being handled, or waiting for their commit."""
    position: int = 0
    """The offset after the last record read."""
    end_at_start: int = 0
    """The partition's end when the worker took it up: outputs committed before then (by
    an earlier member) may lie past what it has read, so until it reads that far its
    handlers' views read to the log's end."""


class Worker:
    """Runs one handler as a member of its consumer group."""

    def __init__(
        self,
        log_: EventLog,
        codec: EventCodec,
        handler: Handler,
        *,
        topics: Topics | None = None,
        input_topics: Sequence[str] | None = None,
        member: str = "0",
        batch_size: int = 500,
        poll_timeout_s: float = 0.2,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_in_flight: int = 10_000,
        offset_commit_interval_s: float = 0.5,
        offset_commit_batch: int = 200,
    ) -> None:
        """`max_in_flight`: how many read records may be open at once (queued behind their
        run, being handled or waiting for their commit); reading pauses at the limit.
        Records handled without outputs commit within `offset_commit_interval_s`, or once
        `offset_commit_batch` of them wait; records with outputs commit at once."""
        self.log = log_
        self.codec = codec
        self.handler = handler
        self.topics = topics or Topics()
        self.input_topics = list(input_topics or [self.topics.events])
        self.group = f"{self.topics.prefix}.{handler.name}"
        self.member = member
        self.batch_size = batch_size
        self.poll_timeout_s = poll_timeout_s
        self.retry = retry or RetryPolicy()
        self.max_in_flight = max_in_flight
        self.offset_commit_interval_s = offset_commit_interval_s
        self.offset_commit_batch = offset_commit_batch
        self._reads_own_outputs = self.topics.events in self.input_topics
        self.stats = WorkerStats()
        self._sleep = sleep
        self._consumer: GroupConsumer | None = None
        self._partitions: dict[TopicPartition, _PartitionState] = {}
        self._paused: set[TopicPartition] = set()
        self._assigned: frozenset[TopicPartition] | None = None
        self._chains: dict[object, deque[LogRecord]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Events a key's records emitted that are not committed yet: later records of the
        # same run must see them (`HandlerContext.uncommitted`) though the log does not yet.
        self._unflushed: dict[object, list[Event]] = {}
        self._ready: list[_Done] = []
        self._has_outputs = False
        self._last_commit = 0.0
        self._wake = asyncio.Event()
        self._poll: asyncio.Future[list[LogRecord]] | None = None
        self._failure: BaseException | None = None

    @property
    def unflushed(self) -> int:
        """Emitted events kept for later records of their run until the log shows them."""
        return sum(len(events) for events in self._unflushed.values())

    @property
    def in_flight(self) -> int:
        """Records read and not yet committed."""
        return sum(len(state.open) for state in self._partitions.values())

    async def start(self) -> None:
        self._consumer = self.log.consumer(self.group, self.input_topics, member=self.member)
        await self._consumer.start()
        self._assigned = self._consumer.assigned()

    async def stop(self) -> None:
        await self._abandon()
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Process records until `stop` is set (or forever)."""
        await self.start()
        try:
            while stop is None or not stop.is_set():
                await self.step()
        finally:
            await self.stop()

    async def step(self) -> int:
        """Read what there is room for, start handling it, and commit what finished.

        Waits up to the poll timeout for records or for a handler to finish. Returns how
        many records it read or committed plus how many are still open, so
        `while await worker.step(): ...` runs until everything read is committed.
        """
        consumer = self._consumer
        assert consumer is not None, "start() the worker first"
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        if self._poll is None and self.in_flight < self.max_in_flight:
            self._poll = asyncio.ensure_future(consumer.poll(self.batch_size, self.poll_timeout_s))
        wait_s = self._commit_due_in()
        if wait_s > 0:
            self._wake.clear()
            woken = asyncio.ensure_future(self._wake.wait())
            waiting: set[asyncio.Future[Any]] = {woken}
            if self._poll is not None:
                waiting.add(self._poll)
            try:
                await asyncio.wait(waiting, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                woken.cancel()
        progressed = 0
        if self._poll is not None and self._poll.done():
            poll, self._poll = self._poll, None
            records = poll.result()
            if consumer.assigned() != self._assigned:
                # Partitions moved to or from another member: start over from what committed.
                await self._abandon()
                await consumer.rewind()
                self._assigned = consumer.assigned()
                return len(records)
            await self._dispatch(records)
            progressed += len(records)
        if self._ready and self._commit_due_in() == 0:
            progressed += await self._commit_ready()
        self._pause_or_resume()
        return progressed + self.in_flight

    async def _dispatch(self, records: list[LogRecord]) -> None:
        assert self._consumer is not None
        for record in records:
            tp = record.position
            state = self._partitions.get(tp)
            if state is None:
                progress = await self._consumer.progress(tp)
                state = self._partitions[tp] = _PartitionState(
                    progress.next_offset,
                    set(progress.done_ahead),
                    position=progress.next_offset,
                    end_at_start=await self.log.end_offset(tp.topic, tp.partition),
                )
            state.position = max(state.position, record.offset + 1)
            if record.key in self._unflushed:
                self._read_back(record)
            if record.offset < state.next_offset or record.offset in state.done:
                continue  # done before a restart: its outputs are on the log already
            state.open.add(record.offset)
            self.stats.records += 1
            try:
                type_name = await self.codec.type_of(record.value)
            except PoisonEvent as poison:
                self._finish(record, None, [self._dead_letter(record, poison.reason, poison.detail)], 0)
                continue
            if type_name not in self.handler.consumes:
                self._finish(record, None, [], 0)
                continue
            key: object = record.key if self.handler.ordered else (tp, record.offset)
            chain = self._chains.get(key)
            if chain is not None:
                chain.append(record)
                continue
            self._chains[key] = deque([record])
            task = asyncio.create_task(self._handle_chain(key), name=f"{self.group}:{record.offset}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _read_back(self, record: LogRecord) -> None:
        """The log shows the worker one of its own outputs: the handler no longer needs it
        passed along as uncommitted."""
        event_id = record.header(EVENT_ID_HEADER)
        emitted = self._unflushed[record.key]
        if event_id is None:
            return
        wanted = event_id.decode()
        for index, event in enumerate(emitted):
            if event.meta.event_id == wanted:
                del emitted[index]
                break
        if not emitted and record.key not in self._chains:
            del self._unflushed[record.key]

    async def _handle_chain(self, key: object) -> None:
        """Handle a key's records one after another, in log order, until none is left."""
        chain = self._chains[key]
        try:
            while chain:
                record = chain[0]
                # An unordered handler's records are independent: nothing to pass along.
                emitted = self._unflushed.setdefault(key, []) if self.handler.ordered else []
                before = len(emitted)
                state = self._partitions[record.position]
                through = state.position if state.position >= state.end_at_start else None
                outputs = await self._process(record, emitted, through)
                chain.popleft()
                self._finish(record, key, outputs, len(emitted) - before)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug in the worker itself: surface it from step()
            self._failure = exc
            self._wake.set()
        finally:
            if self._chains.get(key) is chain:
                del self._chains[key]

    def _finish(self, record: LogRecord, key: object, outputs: list[OutgoingRecord], emitted: int) -> None:
        self._ready.append(_Done(record.position, record.offset, key, outputs, emitted))
        if outputs:
            self._has_outputs = True
            self._wake.set()

    def _commit_due_in(self) -> float:
        """How long the finished records may wait for their commit: none when one has
        outputs (a run is waiting for them); records that only moved the group on (events
        the handler does not consume, mostly) are gathered into fewer commits."""
        if not self._ready:
            return self.poll_timeout_s
        if self._has_outputs or len(self._ready) >= self.offset_commit_batch:
            return 0.0
        due = self._last_commit + self.offset_commit_interval_s - asyncio.get_running_loop().time()
        return max(0.0, min(due, self.poll_timeout_s))

    async def _commit_ready(self) -> int:
        assert self._consumer is not None
        ready, self._ready = self._ready, []
        self._has_outputs = False
        self._last_commit = asyncio.get_running_loop().time()
        outputs = [out for done in ready for out in done.outputs]
        touched: set[TopicPartition] = set()
        for done in ready:
            state = self._partitions[done.position]
            state.open.discard(done.offset)
            state.done.add(done.offset)
            touched.add(done.position)
        consumed: dict[TopicPartition, int] = {}
        ahead: dict[TopicPartition, set[int]] = {}
        for tp in touched:
            state = self._partitions[tp]
            next_offset = min(state.open) if state.open else state.position
            state.done = {o for o in state.done if o >= next_offset}
            consumed[tp] = next_offset
            ahead[tp] = state.done
        attempt = 1
        while True:
            try:
                await self._consumer.commit(outputs, consumed, ahead)
                break
            except AgentstreamError as exc:
                self.stats.commit_failures += 1
                if not exc.retryable or attempt >= self.retry.max_attempts:
                    log.warning("commit of %s failed for good, starting over: %s", self.group, exc)
                    await self._abandon()
                    await self._consumer.rewind()
                    if not exc.retryable:
                        raise
                    return 0
                log.warning("commit of %s failed (attempt %d): %s", self.group, attempt, exc)
                await self._sleep(self.retry.delay(attempt))
                attempt += 1
        for tp, next_offset in consumed.items():
            self._partitions[tp].next_offset = next_offset
        for done in ready:
            if done.emitted and not self._reads_own_outputs:
                emitted = self._unflushed.get(done.key)
                if emitted is not None:
                    del emitted[: done.emitted]
                    if not emitted and done.key not in self._chains:
                        del self._unflushed[done.key]
        self.stats.batches += 1
        return len(ready)

    def _pause_or_resume(self) -> None:
        """Stop reading a partition whose progress could not carry more open records."""
        assert self._consumer is not None
        limit = self._consumer.max_done_ahead_gaps
        if limit is None:
            return
        full = {tp for tp, state in self._partitions.items() if len(state.open) >= limit}
        roomy = {tp for tp in self._paused if len(self._partitions[tp].open) < limit // 2}
        if full - self._paused:
            self._consumer.pause(full - self._paused)
            self._paused |= full
        if roomy:
            self._consumer.resume(roomy)
            self._paused -= roomy

    async def _abandon(self) -> None:
        """Drop everything not committed; it is redone from the committed progress."""
        if self._poll is not None:
            self._poll.cancel()
            with contextlib.suppress(BaseException):
                await self._poll
            self._poll = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._consumer is not None and self._paused:
            self._consumer.resume(set(self._paused))
        self._paused.clear()
        self._chains.clear()
        self._unflushed.clear()
        self._ready.clear()
        self._has_outputs = False
        self._partitions.clear()

    async def _process(
        self, record: LogRecord, emitted_for_run: list[Event], consumed_through: int | None = None
    ) -> list[OutgoingRecord]:
        try:
            event = await self.codec.decode(record.value)
        except PoisonEvent as poison:
            return [self._dead_letter(record, poison.reason, poison.detail)]
        attempt = 1
        while True:
            ctx = HandlerContext(
                self.handler.name, record, event, attempt, tuple(emitted_for_run), consumed_through
            )
            try:
                emitted = await self.handler.handle(event, ctx)
                break
            except Exception as exc:
                retryable = getattr(exc, "retryable", False) is True
                if not retryable or attempt >= self.retry.max_attempts:
                    reason = (
                        DeadLetterReason.HANDLER_REJECTED
                        if not retryable
                        else DeadLetterReason.RETRIES_EXHAUSTED
                    )
                    detail = f"{type(exc).__name__}: {exc}"
                    if retryable:
                        detail = f"{attempt} attempts, last: {detail}"
                    fallout = self.handler.gave_up(
                        event, HandlerContext(self.handler.name, record, event, attempt), detail
                    )
                    return [self._dead_letter(record, reason, detail), *await self._encode(fallout)]
                self.stats.retries += 1
                await self._sleep(self.retry.delay(attempt))
                attempt += 1
        self.stats.handled += 1
        # A handler that reads its outputs back keeps only the run's own until it does;
        # one that never reads them back (the intake) keeps all until they commit.
        emitted_for_run.extend(
            out for out in emitted if out.meta.run_id == event.meta.run_id or not self._reads_own_outputs
        )
        outputs = await self._encode(emitted)
        self.stats.emitted += len(outputs)
        return outputs

    async def _encode(self, events: Sequence[Event]) -> list[OutgoingRecord]:
        topic = self.topics.events
        return [
            OutgoingRecord(
                topic,
                out.meta.run_id.encode(),
                await self.codec.encode(topic, out),
                ((EVENT_ID_HEADER, out.meta.event_id.encode()),),
            )
            for out in events
        ]

    def _dead_letter(self, record: LogRecord, reason: str, detail: str) -> OutgoingRecord:
        self.stats.dead_lettered += 1
        self.stats.dead_letter_reasons[reason] = self.stats.dead_letter_reasons.get(reason, 0) + 1
        log.warning(
            "dead-lettering %s[%d]@%d for %s: %s: %s",
            record.topic,
            record.partition,
            record.offset,
            self.group,
            reason,
            detail,
        )
        headers = record.headers + (
            ("dlq.reason", reason.encode()),
            ("dlq.error", detail.encode()[:4096]),
            ("dlq.topic", record.topic.encode()),
            ("dlq.partition", str(record.partition).encode()),
            ("dlq.offset", str(record.offset).encode()),
            ("dlq.group", self.group.encode()),
        )
        return OutgoingRecord(self.topics.dlq, record.key, record.value, headers)
