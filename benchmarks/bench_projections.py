"""Projection throughput on the embedded default: live apply, and a full rebuild.

    python benchmarks/bench_projections.py -n 200000
    python benchmarks/bench_projections.py -n 1000000 --dir /var/tmp/bench
    python benchmarks/bench_projections.py -n 50000 --store cassandra://127.0.0.1:9042/bench

Simulated runs (tests/support/runs.py: many tenants, tool calls, approvals, charges) are
appended to a SQLite log. Then every built-in projection (run state, episodic,
approvals, cost ledger) is applied to a SQLite store the way `agentstream projections
run` does it (batches of --batch, each committed with its offsets), and finally all of
them are rebuilt from offset 0 the way `agentstream projections rebuild` does it.
`--store URL` projects into another store (Cassandra: the keyspace is dropped first and
after). Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support.runs

from projections.builtin import builtin_projections
from projections.projector import Projector
from projections.stores import open_store
from streams.codec import EventCodec
from streams.registry import EmbeddedSchemaRegistry
from streams.sqlite_log import SqliteEventLog
from streams.topics import Topics
from tests.support.runs import publish, simulate

RUNS_PER_GROUP = 2000


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


async def _drop(url: str) -> None:
    from projections.stores.cassandra import CassandraProjectionStore

    store = open_store(url)
    assert isinstance(store, CassandraProjectionStore)
    await store.drop_keyspace()
    await store.close()


async def bench(
    n: int, batch: int, rebuild_batch: int, workdir: Path, partitions: int, store_url: str | None = None
) -> dict[str, Any]:
    log = SqliteEventLog(workdir / "log.db", synchronous="normal")
    topics = Topics(prefix="bench", partitions=partitions)
    for spec in topics.specs():
        await log.create_topic(spec)
    codec = EventCodec(EmbeddedSchemaRegistry(workdir / "registry.db"))

    start = time.perf_counter()
    appended = runs = group = 0
    while appended < n:
        # Generated and appended a group of runs at a time, so memory stays flat.
        events = simulate(seed=group, runs=RUNS_PER_GROUP, run_prefix=f"g{group}")[: n - appended]
        await publish(log, codec, topics.events, events, chunk=1000)
        appended += len(events)
        runs += len({e.meta.run_id for e in events})
        group += 1
    setup_s = time.perf_counter() - start

    if store_url and store_url.startswith("cassandra://"):
        await _drop(store_url)
    store = open_store(store_url or f"sqlite://{workdir}/views.db")
    live = Projector(log, codec, store, builtin_projections(), topic=topics.events, batch_size=batch)
    await live.start()
    start = time.perf_counter()
    applied = await live.run_until_caught_up()
    apply_s = time.perf_counter() - start

    rebuilder = Projector(
        log, codec, store, builtin_projections(), topic=topics.events, batch_size=rebuild_batch
    )
    start = time.perf_counter()
    rebuilt = await rebuilder.rebuild()
    rebuild_s = time.perf_counter() - start

    result = {
        "events": appended,
        "runs": runs,
        "partitions": partitions,
        "setup_generate_and_append_s": round(setup_s, 1),
        "apply": {
            "batch": batch,
            "seconds": round(apply_s, 1),
            "events_per_s": round(applied.applied / apply_s),
            "commits": applied.batches,
        },
        "rebuild": {
            "batch": rebuild_batch,
            "seconds": round(rebuild_s, 1),
            "events_per_s": round(rebuilt.applied / rebuild_s),
            "commits": rebuilt.batches,
        },
        "log_bytes": _size(workdir / "log.db"),
        "store": store_url.split("://", 1)[0] if store_url else "sqlite",
    }
    if not store_url:
        result["store_bytes"] = _size(workdir / "views.db")
    await store.close()
    if store_url and store_url.startswith("cassandra://"):
        await _drop(store_url)
    await log.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=200_000, help="events to append and project")
    parser.add_argument("--batch", type=int, default=500, help="records per commit when applying live")
    parser.add_argument("--rebuild-batch", type=int, default=5000, help="records per commit when rebuilding")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--dir", type=Path, default=None, help="where the log and store go (default: a temp dir)"
    )
    parser.add_argument(
        "--store", default=None, help="projection store URL (default: SQLite in the work dir)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        result = asyncio.run(
            bench(args.n, args.batch, args.rebuild_batch, Path(tmp), args.partitions, args.store)
        )
    print(
        json.dumps(
            {"bench": "projections", "python": platform.python_version(), "cpus": os.cpu_count(), **result},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
