"""The worker runtime: hosts one handler over a consumer group, exactly once.

A handler declares the event types it consumes and returns the events to emit. The
worker reads a batch, decodes it, calls the handler for each event it consumes, and then
commits the batch's outputs together with the consumed offsets in one atomic step. A
worker killed at any instant therefore redoes at most the uncommitted batch, and its
outputs are never appended twice.

Records that can never be processed (not our wire format, unknown schema id, an event
type we do not know, a corrupt body, a handler that rejects the event or keeps failing)
are appended to the dead-letter topic, in the same commit, with the original bytes and
the reason in headers; the worker keeps going.
"""

from __future__ import annotations

import asyncio
import logging
import random
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from streams.codec import DeadLetterReason, EventCodec
from streams.envelope import caused_by
from streams.errors import AgentstreamError, PoisonEvent
from streams.events import Event, EventMeta
from streams.log import EventLog, GroupConsumer, LogRecord, OutgoingRecord, TopicPartition
from streams.topics import Topics

log = logging.getLogger(__name__)


class HandlerContext:
    """What a handler knows besides the event: where it came from, and how to stamp outputs."""

    def __init__(
        self,
        handler: str,
        record: LogRecord,
        event: Event,
        attempt: int,
        uncommitted: Sequence[Event] = (),
    ) -> None:
        self.handler = handler
        self.record = record
        self.event = event
        self.attempt = attempt
        self.uncommitted = uncommitted
        """Events this handler emitted for the same run earlier in the current batch: they
        are not in the log yet, but a handler reading the run's history must see them."""
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
        max_concurrency: int = 64,
    ) -> None:
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
        self.stats = WorkerStats()
        self._sleep = sleep
        self._concurrency = asyncio.Semaphore(max_concurrency)
        self._consumer: GroupConsumer | None = None

    async def start(self) -> None:
        self._consumer = self.log.consumer(self.group, self.input_topics, member=self.member)
        await self._consumer.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Process batches until `stop` is set (or forever)."""
        await self.start()
        try:
            while stop is None or not stop.is_set():
                await self.step()
        finally:
            await self.stop()

    async def step(self) -> int:
        """Poll one batch, process and commit it; returns how many records it read."""
        assert self._consumer is not None, "start() the worker first"
        records = await self._consumer.poll(self.batch_size, self.poll_timeout_s)
        if not records:
            return 0
        # Records of one run (one key) are handled in order; different runs concurrently.
        by_key: dict[bytes | None, list[int]] = {}
        for index, record in enumerate(records):
            by_key.setdefault(record.key if self.handler.ordered else index.to_bytes(4), []).append(index)
        results: list[list[OutgoingRecord]] = [[] for _ in records]

        async def handle_run(indexes: list[int]) -> None:
            emitted: list[Event] = []
            for index in indexes:
                async with self._concurrency:
                    results[index] = await self._process(records[index], emitted)

        await asyncio.gather(*(handle_run(indexes) for indexes in by_key.values()))
        outputs = [out for result in results for out in result]
        consumed: dict[TopicPartition, int] = {}
        for record in records:
            consumed[record.position] = record.offset + 1
        attempt = 1
        while True:
            try:
                await self._consumer.commit(outputs, consumed)
                break
            except AgentstreamError as exc:
                self.stats.commit_failures += 1
                if not exc.retryable or attempt >= self.retry.max_attempts:
                    await self._consumer.rewind()
                    raise
                log.warning("commit of %s failed (attempt %d): %s", self.group, attempt, exc)
                await self._sleep(self.retry.delay(attempt))
                attempt += 1
        self.stats.batches += 1
        self.stats.records += len(records)
        return len(records)

    async def _process(self, record: LogRecord, emitted_for_run: list[Event]) -> list[OutgoingRecord]:
        try:
            type_name = await self.codec.type_of(record.value)
            if type_name not in self.handler.consumes:
                return []
            event = await self.codec.decode(record.value)
        except PoisonEvent as poison:
            return [self._dead_letter(record, poison.reason, poison.detail)]
        attempt = 1
        while True:
            ctx = HandlerContext(self.handler.name, record, event, attempt, tuple(emitted_for_run))
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
        emitted_for_run.extend(out for out in emitted if out.meta.run_id == event.meta.run_id)
        outputs = await self._encode(emitted)
        self.stats.emitted += len(outputs)
        return outputs

    async def _encode(self, events: Sequence[Event]) -> list[OutgoingRecord]:
        topic = self.topics.events
        return [
            OutgoingRecord(topic, out.meta.run_id.encode(), await self.codec.encode(topic, out))
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
