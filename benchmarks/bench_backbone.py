"""Event backbone throughput: codec encode/decode, and append+consume through a worker.

    python benchmarks/bench_backbone.py codec
    python benchmarks/bench_backbone.py worker --log sqlite:///tmp/bench.db
    python benchmarks/bench_backbone.py worker --log kafka://127.0.0.1:19092

The worker benchmark appends N events (batches of 500) while a worker with a no-op
handler consumes them; each batch's offsets are committed atomically with its (empty)
outputs, so the figure is durable append + exactly-once consume, end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from streams.backends import open_log
from streams.codec import EventCodec
from streams.envelope import root_meta
from streams.events import Event, ToolCallRequested
from streams.log import OutgoingRecord
from streams.registry import EmbeddedSchemaRegistry
from streams.topics import Topics
from streams.worker import Handler, HandlerContext, Worker


def _event(i: int) -> ToolCallRequested:
    return ToolCallRequested(
        meta=root_meta(f"run-{i % 1000}", "acme", "bench"),
        step=i % 20,
        tool_call_id=f"call_{i}",
        tool="calculator",
        arguments_json='{"expression": "(1234 * 5678) / 3"}',
    )


async def bench_codec(n: int) -> dict[str, float]:
    codec = EventCodec(EmbeddedSchemaRegistry(":memory:"))
    events = [_event(i) for i in range(1000)]
    schema_id = await codec.schema_id("bench", "ToolCallRequested")
    start = time.perf_counter()
    for i in range(n):
        codec.encode_with(schema_id, events[i % 1000])
    encode = n / (time.perf_counter() - start)
    blobs = [codec.encode_with(schema_id, e) for e in events]
    writer = await codec.writer(schema_id)
    start = time.perf_counter()
    for i in range(n):
        codec.read_datum(writer, blobs[i % 1000])
    decode_datum = n / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(n):
        await codec.decode(blobs[i % 1000])
    decode_typed = n / (time.perf_counter() - start)
    return {
        "encode_per_s": encode,
        "decode_to_dict_per_s": decode_datum,
        "decode_to_model_per_s": decode_typed,
        "bytes_per_event": float(len(blobs[0])),
    }


class NoOp(Handler):
    """Consumes ToolCallRequested and emits nothing."""

    name = "bench-noop"
    consumes = frozenset({"ToolCallRequested"})

    async def handle(self, event: Event, ctx: HandlerContext) -> Sequence[Event]:
        return ()


async def bench_worker(url: str, n: int, batch: int) -> dict[str, float]:
    log = open_log(url)
    topics = Topics(prefix=f"bench{uuid.uuid4().hex[:8]}", partitions=4)
    for spec in topics.specs():
        await log.create_topic(spec)
    with tempfile.TemporaryDirectory() as tmp:
        codec = EventCodec(EmbeddedSchemaRegistry(Path(tmp) / "registry.db"))
        schema_id = await codec.schema_id(topics.events, "ToolCallRequested")
        records = [
            OutgoingRecord(topics.events, e.meta.run_id.encode(), codec.encode_with(schema_id, e))
            for e in (_event(i) for i in range(n))
        ]
        worker = Worker(log, codec, NoOp(), topics=topics, batch_size=batch, poll_timeout_s=0.05)
        await worker.start()

        async def produce() -> float:
            begin = time.perf_counter()
            for i in range(0, n, 500):
                await log.append(records[i : i + 500])
            return time.perf_counter() - begin

        async def consume() -> None:
            while worker.stats.handled < n:
                await worker.step()

        start = time.perf_counter()
        produce_s, _ = await asyncio.gather(produce(), consume())
        total = time.perf_counter() - start
        await worker.stop()
    await log.close()
    return {
        "events": float(n),
        "append_per_s": n / produce_s,
        "append_and_consume_per_s": n / total,
        "batches": float(worker.stats.batches),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["codec", "worker"])
    parser.add_argument("--log", default=None, help="event log URL (worker)")
    parser.add_argument("-n", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    if args.what == "codec":
        result = asyncio.run(bench_codec(args.n))
    else:
        url = args.log or f"sqlite://{tempfile.mkdtemp()}/bench.db"
        result = asyncio.run(bench_worker(url, args.n, args.batch))
        result = {"log": url, **result}  # type: ignore[dict-item]
    print(json.dumps({"bench": args.what, "python": platform.python_version(), **result}, indent=1))


if __name__ == "__main__":
    main()
