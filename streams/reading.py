"""Reading events back from the log: one run's events, in order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from streams.codec import EventCodec
from streams.events import Event
from streams.log import EventLog, LogRecord
from streams.partitioning import partition_for
from streams.topics import Topics


async def read_run(
    log: EventLog, codec: EventCodec, topics: Topics, run_id: str
) -> AsyncIterator[tuple[LogRecord, Event]]:
    """Every event of a run, in log order, decoded.

    A run's events share one partition (key = run id), so only that partition is read.
    """
    topic = topics.events
    key = run_id.encode()
    partition = partition_for(key, await log.partitions(topic))
    for record in await log.read_key(topic, partition, key):
        yield record, await codec.decode(record.value)


def event_json(record: LogRecord, event: Event) -> dict[str, Any]:
    """An event as one JSON-ready object: its type and position, then its fields."""
    return {
        "type": event.type_name,
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        **event.model_dump(mode="json"),
    }
