"""Projections and the projector: the events topic folded into views, each event once.

A `Projection` declares the event types it consumes and the tables it writes, and
folds events into rows through a `ViewTransaction`. The `Projector` reads the log from
the offsets the *store* records (not consumer-group offsets), decodes what some
projection consumes, lets each projection apply the batch, and commits the rows
together with the new offsets in one store transaction. A projector killed at any
instant resumes from the last committed batch: nothing is skipped, nothing applied twice.

Records that cannot be decoded are skipped and counted; the workers dead-letter them.
An event a projection's fold raises on (a bug in the fold, not in the store) is set
aside for that projection only: recorded in `fold_failures` in the same commit,
so the other events and the other views go on, the failure is visible in `agentstream
projections status`, and a rebuild once the fold is fixed applies it again.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

from projections.errors import ProjectionConflict
from projections.stores.base import Index, ProjectionSchema, ProjectionStore, Table, ViewTransaction
from streams.codec import EventCodec
from streams.errors import AgentstreamError, ConfigError, PoisonEvent
from streams.events import Event
from streams.log import EventLog, LogRecord, TopicPartition
from streams.worker import RetryPolicy

log = logging.getLogger(__name__)

Applied = tuple[Event, LogRecord]

FAILURES = Table(
    "fold_failures",
    columns={
        "tenant_id": "text",
        "projection": "text",
        "log_partition": "int",
        "log_offset": "int",
        "event_id": "text",
        "type": "text",
        "error": "text",
        "occurred_at": "time",
    },
    key=("tenant_id", "projection", "log_partition", "log_offset"),
    indexes=(Index("by_time", order=("occurred_at",)),),
)
FAILURES_SCHEMA = ProjectionSchema("fold_failures", 1, (FAILURES,))
ERROR_CHARS = 1_000


class Projection(ABC):
    """A read model folded from events.

    A fold must be deterministic and write only through the transaction it is given.
    The projector applies one partition's records in log order, but interleaves
    partitions arbitrarily, and a tenant's runs live in many partitions: anything a
    projection keeps across runs (totals per tenant, say) must not depend on that
    interleaving, so use sums of integers, counts and maxima, never running floats or
    "last one wins". That is what makes a rebuild equal to the live view, row for row.
    """

    name: str
    """Names the projection in the store and on the command line."""
    consumes: frozenset[str]
    """Event type names applied; records of other types are skipped without decoding."""
    tables: tuple[Table, ...]
    """The tables this projection owns: dropped and recreated by a rebuild."""
    version: int = 1
    """Bump when the fold changes meaning: the store then rebuilds the views from 0."""

    @property
    def schema(self) -> ProjectionSchema:
        return ProjectionSchema(self.name, self.version, self.tables)

    @abstractmethod
    async def apply(self, event: Event, record: LogRecord, txn: ViewTransaction) -> None:
        """Fold one event, found at `record`'s position, into the views."""

    async def apply_batch(self, items: Sequence[Applied], txn: ViewTransaction) -> None:
        """Fold a batch of events; override to load and save each touched row once."""
        for event, record in items:
            await self.apply(event, record, txn)


@dataclass
class ProjectorStats:
    """Counters a projector keeps, counting committed batches only."""

    batches: int = 0
    records: int = 0
    """Records read past, whatever became of them."""
    applied: int = 0
    """Events decoded and applied to at least one projection."""
    skipped: int = 0
    """Records of types no projection consumes."""
    undecodable: int = 0
    """Records that are not events of our catalogue (the workers dead-letter them)."""
    tenantless: int = 0
    """Events without a tenant id: no tenant could ever read them, so no view keeps them."""
    conflicts: int = 0
    """Batches refused because another projector had moved the offsets."""
    failed: int = 0
    """Events a projection's fold raised on, set aside in `fold_failures`."""
    retries: int = 0

    def since(self, before: ProjectorStats) -> ProjectorStats:
        return ProjectorStats(
            **{f.name: getattr(self, f.name) - getattr(before, f.name) for f in fields(self)}
        )


@dataclass(frozen=True)
class PartitionStatus:
    """How far a projection has applied one partition."""

    partition: int
    applied: int
    """The next offset the projection will apply."""
    end: int
    """The log's end offset. On Kafka, transaction markers take offsets too, so a
    caught-up projection may show a small lag."""

    @property
    def lag(self) -> int:
        return max(0, self.end - self.applied)


@dataclass(frozen=True)
class ProjectionStatus:
    """A projection's offsets against the log's end offsets."""

    name: str
    partitions: tuple[PartitionStatus, ...]
    failed: int = 0
    """Events set aside because the fold raised on them (see `fold_failures`)."""

    @property
    def applied(self) -> int:
        return sum(p.applied for p in self.partitions)

    @property
    def end(self) -> int:
        return sum(p.end for p in self.partitions)

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)


Progress = Callable[[ProjectorStats], None]


class Projector:
    """Applies projections to one topic, batch by batch, exactly once per projection.

    Each projection has its own offsets, so one being rebuilt catches up while the others
    stay where they are; a batch starts at the lowest of them and gives each projection
    only the records past its own offset.
    """

    def __init__(
        self,
        log_: EventLog,
        codec: EventCodec,
        store: ProjectionStore,
        projections: Sequence[Projection],
        *,
        topic: str,
        batch_size: int = 1000,
        idle_wait_max_s: float = 0.05,
        retry: RetryPolicy | None = None,
    ) -> None:
        names = [p.name for p in projections]
        if len(set(names)) != len(names):
            raise ConfigError(f"projection names must be unique: {names}")
        self.log = log_
        self.codec = codec
        self.store = store
        self.projections = list(projections)
        self.topic = topic
        self.batch_size = batch_size
        self.idle_wait_max_s = idle_wait_max_s
        self.retry = retry or RetryPolicy()
        self.stats = ProjectorStats()
        self._active = list(projections)
        self._offsets: dict[str, dict[TopicPartition, int]] = {}
        self._partitions: int | None = None

    def projection(self, name: str) -> Projection:
        for projection in self.projections:
            if projection.name == name:
                return projection
        raise ConfigError(f"no projection named {name!r}; there are {[p.name for p in self.projections]}")

    async def register(self) -> None:
        """Create or migrate every projection's tables (a projection whose schema changed
        starts empty). Idempotent, and safe from any number of processes."""
        await self.store.register(FAILURES_SCHEMA)
        for projection in self.projections:
            if await self.store.register(projection.schema):
                log.info("projection %s starts empty: it will apply the log from offset 0", projection.name)

    async def start(self) -> None:
        """Register every projection's tables and load the offsets to resume from."""
        self._partitions = await self.log.partitions(self.topic)
        await self.register()
        await self.reload()

    async def reload(self) -> None:
        """Forget what is in memory and resume from the offsets the store holds."""
        for projection in self.projections:
            self._offsets[projection.name] = await self.store.offsets(projection.name)

    async def step(self) -> int:
        """Read, apply and commit one batch; returns how many records it read."""
        if self._partitions is None:
            await self.start()
        assert self._partitions is not None
        active = self._active
        offsets = self._offsets
        share = max(1, -(-self.batch_size // self._partitions))
        records: list[LogRecord] = []
        ends: dict[TopicPartition, int] = {}
        for partition in range(self._partitions):
            tp = TopicPartition(self.topic, partition)
            begin = min(offsets[p.name].get(tp, 0) for p in active)
            batch = await self.log.read(self.topic, partition, begin, share)
            if batch:
                records.extend(batch)
                ends[tp] = batch[-1].offset + 1
        if not records:
            return 0

        items: dict[str, list[Applied]] = {p.name: [] for p in active}
        applied = skipped = undecodable = tenantless = 0
        for record in records:
            tp = record.position
            takers = [p for p in active if record.offset >= offsets[p.name].get(tp, 0)]
            if not takers:
                continue
            try:
                type_name = await self.codec.type_of(record.value)
                takers = [p for p in takers if type_name in p.consumes]
                if not takers:
                    skipped += 1
                    continue
                event = await self.codec.decode(record.value)
            except PoisonEvent as poison:
                undecodable += 1
                log.debug("skipping %s[%d]@%d: %s", record.topic, record.partition, record.offset, poison)
                continue
            if not event.meta.tenant_id:
                tenantless += 1
                continue
            applied += 1
            for projection in takers:
                items[projection.name].append((event, record))

        txn = self.store.transaction()
        moved: dict[str, dict[TopicPartition, int]] = {}
        failed = 0
        for projection in active:
            if items[projection.name]:
                failed += await self._apply(projection, items[projection.name], txn)
            old = offsets[projection.name]
            new = {tp: end for tp, end in ends.items() if end > old.get(tp, 0)}
            if new:
                txn.advance(projection.name, old, new)
                moved[projection.name] = {**old, **new}
        try:
            await self.store.commit(txn)
        except ProjectionConflict as conflict:
            self.stats.conflicts += 1
            log.info("%s; reloading offsets", conflict)
            await self.reload()
            return len(records)
        offsets.update(moved)
        self.stats.batches += 1
        self.stats.records += len(records)
        self.stats.applied += applied
        self.stats.skipped += skipped
        self.stats.undecodable += undecodable
        self.stats.tenantless += tenantless
        self.stats.failed += failed
        return len(records)

    async def _apply(self, projection: Projection, items: list[Applied], txn: ViewTransaction) -> int:
        """Apply a batch to one projection; returns how many events it had to set aside.

        Store errors propagate (the batch is retried). Any other exception is the fold's:
        the batch is applied again event by event, each failing one undone and recorded.
        """
        before = dict(txn.changes)
        try:
            await projection.apply_batch(items, txn)
            return 0
        except AgentstreamError:
            raise
        except Exception:
            txn.changes = before
        failed = 0
        for event, record in items:
            before = dict(txn.changes)
            try:
                await projection.apply_batch([(event, record)], txn)
            except AgentstreamError:
                raise
            except Exception as exc:
                txn.changes = before
                failed += 1
                log.error(
                    "projection %s cannot apply %s %s at %s[%d]@%d; set aside: %r",
                    projection.name,
                    event.type_name,
                    event.meta.event_id,
                    record.topic,
                    record.partition,
                    record.offset,
                    exc,
                )
                txn.put(
                    FAILURES,
                    {
                        "tenant_id": event.meta.tenant_id,
                        "projection": projection.name,
                        "log_partition": record.partition,
                        "log_offset": record.offset,
                        "event_id": event.meta.event_id,
                        "type": event.type_name,
                        "error": f"{type(exc).__name__}: {exc}"[:ERROR_CHARS],
                        "occurred_at": event.meta.occurred_at,
                    },
                )
        return failed

    async def failures(self) -> dict[str, int]:
        """How many events each projection has set aside."""
        counts: dict[str, int] = {}
        for row in await self.store.scan(FAILURES):
            counts[row["projection"]] = counts.get(row["projection"], 0) + 1
        return counts

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Apply batches until `stop` is set (or forever), waiting while the log is idle."""
        await self.start()
        stop = stop or asyncio.Event()
        idle = 0.001
        attempt = 0
        while not stop.is_set():
            try:
                read = await self.step()
                attempt = 0
            except AgentstreamError as exc:
                attempt += 1
                if not exc.retryable or attempt >= self.retry.max_attempts:
                    raise
                self.stats.retries += 1
                log.warning("projector batch failed (attempt %d): %s", attempt, exc)
                await asyncio.sleep(self.retry.delay(attempt))
                await self.reload()
                continue
            if read:
                idle = 0.001
                continue
            try:
                await asyncio.wait_for(stop.wait(), idle)
            except TimeoutError:
                idle = min(idle * 2, self.idle_wait_max_s)

    async def run_until_caught_up(self, on_progress: Progress | None = None) -> ProjectorStats:
        """Apply batches until the log has nothing more to read; returns what this did."""
        if self._partitions is None:
            await self.start()
        before = ProjectorStats(**{f.name: getattr(self.stats, f.name) for f in fields(self.stats)})
        while await self.step():
            if on_progress is not None:
                on_progress(self.stats.since(before))
        return self.stats.since(before)

    async def rebuild(self, name: str | None = None, on_progress: Progress | None = None) -> ProjectorStats:
        """Drop one projection's views and offsets (or every projection's) and apply from 0.

        Other projections keep their views and offsets and do not move meanwhile.
        """
        if self._partitions is None:
            await self.start()
        chosen = [self.projection(name)] if name is not None else list(self.projections)
        names = {p.name for p in chosen}
        forget = self.store.transaction()
        for row in await self.store.scan(FAILURES):
            if row["projection"] in names:
                forget.delete(FAILURES, FAILURES.key_of(row))
        await self.store.commit(forget)
        for projection in chosen:
            await self.store.reset(projection.schema)
            self._offsets[projection.name] = {}
        saved, self._active = self._active, chosen
        try:
            return await self.run_until_caught_up(on_progress)
        finally:
            self._active = saved

    async def end_offsets(self) -> dict[int, int]:
        partitions = await self.log.partitions(self.topic)
        return {p: await self.log.end_offset(self.topic, p) for p in range(partitions)}

    async def status(self) -> list[ProjectionStatus]:
        """Each projection's applied offsets against the log's end offsets, and its failures.

        Registers no projection (only the failures table, if missing)."""
        ends = await self.end_offsets()
        await self.store.register(FAILURES_SCHEMA)
        failures = await self.failures()
        out = []
        for projection in self.projections:
            applied = await self.store.offsets(projection.name)
            out.append(
                ProjectionStatus(
                    projection.name,
                    tuple(
                        PartitionStatus(p, applied.get(TopicPartition(self.topic, p), 0), end)
                        for p, end in sorted(ends.items())
                    ),
                    failures.get(projection.name, 0),
                )
            )
        return out
