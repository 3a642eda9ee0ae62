"""Local sandbox (bubblewrap): cold start to first output, and throughput.

Cold start: from ``launch()`` to the moment the job's output ``1`` can be read back
(``wait()`` returns its result), for ``python3 -c 'print(1)'``, one job at a time. Every
job is a new sandbox: new namespaces, a new tmpfs, a new interpreter; nothing is reused
but the host's page cache. Throughput: jobs/s with 2 jobs in flight.

    python benchmarks/bench_sandbox.py [--jobs 100] [--isolated-python] [--no-host]

``--isolated-python`` runs ``python3 -I -S -c 'print(1)'`` (no site import) instead.
``--no-host`` starts a supervisor interpreter per job instead of forking it from the
state dir's supervisor host. ``first_job_ms`` is the first job on a fresh state dir,
which also starts the host.
Target: cold start p50 <= 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandbox_jobs.base import JobSpec, job_id_for
from sandbox_jobs.local import LocalLauncher


def spec(argv: tuple[str, ...]) -> JobSpec:
    key = uuid.uuid4().hex
    return JobSpec(job_id_for(key), "bench", "bench", key[:8], argv)


async def one(launcher: LocalLauncher, argv: tuple[str, ...]) -> float:
    job = spec(argv)
    started = time.perf_counter()
    await launcher.launch(job)
    result = await launcher.wait(job.job_id, 60)
    elapsed = time.perf_counter() - started
    if result.stdout != "1\n":
        raise RuntimeError(f"unexpected result: {result}")
    await launcher.delete(job.job_id)
    return elapsed * 1000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--isolated-python", action="store_true")
    parser.add_argument("--no-host", action="store_true")
    args = parser.parse_args()
    argv: tuple[str, ...] = ("python3", "-c", "print(1)")
    if args.isolated_python:
        argv = ("python3", "-I", "-S", "-c", "print(1)")
    host_idle_s = 0.0 if args.no_host else 30.0
    with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as state:
        fresh = [LocalLauncher(Path(state) / f"first-{i}", host_idle_s=host_idle_s) for i in range(10)]
        first = [await one(each, argv) for each in fresh]
        launcher = LocalLauncher(Path(state) / "jobs", host_idle_s=host_idle_s)
        for _ in range(3):  # the page cache, not the sandbox
            await one(launcher, argv)
        cold = [await one(launcher, argv) for _ in range(args.jobs)]

        started = time.perf_counter()
        queue = list(range(args.jobs))

        async def lane() -> None:
            while queue:
                queue.pop()
                await one(launcher, argv)

        await asyncio.gather(lane(), lane())
        throughput = args.jobs / (time.perf_counter() - started)
    print(
        json.dumps(
            {
                "command": " ".join(argv),
                "supervisor": "own interpreter per job" if args.no_host else "forked by the host",
                "first_job_ms": {"p50": round(statistics.median(first), 1)},
                "jobs": args.jobs,
                "cold_start_ms": {
                    "p50": round(statistics.median(cold), 1),
                    "p95": round(percentile(cold, 0.95), 1),
                    "min": round(min(cold), 1),
                },
                "jobs_per_s_2_concurrent": round(throughput, 1),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
