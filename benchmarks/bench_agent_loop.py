"""Orchestration overhead of the agent loop, with an instant model and an instant tool.

Optional benchmark dependencies (NOT project dependencies), versions this was run with:

    pip install -e '.[bench]'   # langgraph, langgraph-checkpoint-sqlite (pinned)
    pip install pyinstrument==5.1.3
    # pulled in: langgraph-checkpoint==4.3.2 langchain-core==1.8.3 aiosqlite==0.22.1

Without langgraph the LangGraph rows are skipped with a message; without pyinstrument
--profile falls back to cProfile.

    python benchmarks/bench_agent_loop.py --markdown
    python benchmarks/bench_agent_loop.py --log embedded --log kafka://127.0.0.1:19092 --markdown
    python benchmarks/bench_agent_loop.py --log sqlite --concurrency 1000 --repeats 1 \\
        --no-langgraph --profile profile.txt

Workload (identical in both systems): every run is asked a goal naming how many tool steps
to take (--tool-steps, default 5). A scripted model, answering from the conversation alone
with zero latency, calls the no-op tool `noop` with {"i": k} while fewer than that many tool
results are in the conversation, then answers. A run therefore has tool_steps + 1 planner
steps (model calls); arguments differ per step so loop detection never fires.

  * agentstream: `AgentRuntime` (planner, tool router, tool executor, evaluator as workers
    over the log) with the scripted ModelClient injected as the model factory and a
    registry holding only `noop`. Tasks of one wave are appended in one batch (what
    `AgentRuntime.submit` does, once per task). Completion is detected by an extra,
    never-committing consumer of the events topic (`--log` backends: `sqlite` =
    synchronous=full, `sqlite-normal` = synchronous=normal, `embedded` = both,
    `kafka://host:port`).
  * LangGraph: StateGraph(messages) with an `agent` node running the same scripted logic,
    the prebuilt ToolNode with the same no-op tool, tools_condition routing,
    AsyncSqliteSaver checkpointer on a file, one thread per run, a wave started with
    asyncio.gather. Durability `async` (LangGraph's default) and `sync` (every checkpoint
    written before the next step, the guarantee agentstream always gives).

Measures (per configuration, concurrency and repeat; concurrency 1 = --serial-runs runs
one after another, concurrency C > 1 = one wave of C runs in flight together):

  * step_ms: time between consecutive model calls of the same run, on a microsecond
    clock. With an instant model and tool this is everything the runtime does for one
    step: persist the plan and call, route, execute, record the observation, rebuild the
    run's state and call the model again. Same definition in both systems.
  * event_step_ms (agentstream only): time between consecutive PlanProposed records of a
    run becoming visible to a consumer of the log (the first step from submit).
  * run_ms_per_step: a run's wall time (submit to terminal event seen / ainvoke returned)
    divided by its planner steps.
  * steps_per_s: planner steps completed by all runs / wall time of the wave(s).

Per-step latency at C in flight is mostly queueing (about C / throughput); the overhead
figure to read is C = 1, the capacity figure is steps_per_s at C = 1000.

Other switches: --time-limit cuts a wave that runs longer (then the steps planned within
the limit count, and the row says so); --breakdown times the awaited runtime calls (views,
log reads, commits, ledger) per step; --profile FILE profiles the measured windows;
--runtime-memory keeps the runtime's semantic memory at its default (off here, so both
systems run the same one-tool agent). Repeats are interleaved across configurations;
the JSON records the commit measured, nproc, CPU model and load averages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import inspect
import io
import itertools
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: the repository root holds benchmarks.peers
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentstream.config import Settings
from agentstream.runtime import TERMINAL_TYPES, AgentRuntime, Task
from benchmarks.peers.langgraph_peer import INSTALL_HINT, LangGraphAgent
from benchmarks.peers.langgraph_peer import versions as langgraph_versions
from handlers.llm.base import ModelClient
from handlers.llm.messages import ModelRequest, ModelResponse, ToolCall, ToolResultMessage, UserMessage
from handlers.planner import PlannerSettings
from handlers.tools.base import Tool, ToolContext, ToolRegistry, ToolResult, ToolSpec
from streams.errors import PoisonEvent
from streams.log import GroupConsumer, OutgoingRecord
from streams.topics import Topics

GOAL = "bench run {index}: call noop {steps} times, then answer"
_GOAL_STEPS = re.compile(r"call noop (\d+) times")
TOOL_NAME = "noop"
TOOL_SCHEMA = {
    "type": "object",
    "properties": {"i": {"type": "integer", "description": "step number"}},
    "required": ["i"],
    "additionalProperties": False,
}
MEASURE_TIMEOUT_S = 900.0


# --------------------------------------------------------------------------- scripted logic


class Clock:
    """Microsecond timestamps of each run's model calls, keyed by the goal text."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = defaultdict(list)

    def reset(self) -> None:
        self.calls.clear()


def decide(goal: str, tool_results: int) -> tuple[str, dict[str, int] | None]:
    """The scripted model: call `noop` until the goal's count of tool results is reached."""
    match = _GOAL_STEPS.search(goal)
    wanted = int(match.group(1)) if match else 0
    if tool_results < wanted:
        return f"step {tool_results + 1}: calling {TOOL_NAME}", {"i": tool_results}
    return f"done after {tool_results} tool calls", None


class ScriptedModel(ModelClient):
    """An instant, deterministic model answering from the conversation it is sent."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    @property
    def name(self) -> str:
        return "scripted:instant"

    async def complete(self, request: ModelRequest) -> ModelResponse:
        now = time.perf_counter()
        goal = next(m.content for m in request.messages if isinstance(m, UserMessage))
        results = sum(1 for m in request.messages if isinstance(m, ToolResultMessage))
        self.clock.calls[goal].append(now)
        text, args = decide(goal, results)
        calls = [ToolCall(id=f"c{results}", name=TOOL_NAME, arguments=args)] if args is not None else []
        return ModelResponse(
            text=text,
            tool_calls=calls,
            model="scripted-instant",
            stop_reason="tool_use" if calls else "end_turn",
        )


class NoopTool(Tool):
    """Does nothing, at once."""

    SPEC = ToolSpec(
        name=TOOL_NAME,
        description="Does nothing and returns at once.",
        parameters=TOOL_SCHEMA,
        timeout_s=5.0,
        idempotent=True,
        safe_to_retry=True,
    )

    @property
    def spec(self) -> ToolSpec:
        return self.SPEC

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolResult:
        return ToolResult.success({"ok": True})


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def dist(values: Sequence[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "mean": statistics.fmean(values) if values else None,
        "max": max(values) if values else None,
    }


def gaps_ms(times: Sequence[float]) -> list[float]:
    return [(b - a) * 1000 for a, b in itertools.pairwise(times)]


@dataclass
class Measurement:
    """One wave (or series of serial runs) of one configuration."""

    runs: int = 0
    completed: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    steps: int = 0
    wall_s: float = 0.0
    step_ms: list[float] = field(default_factory=list)
    first_step_ms: list[float] = field(default_factory=list)
    event_step_ms: list[float] = field(default_factory=list)
    event_ts_step_ms: list[float] = field(default_factory=list)
    run_ms_per_step: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def absorb(self, other: Measurement) -> None:
        self.runs += other.runs
        self.completed += other.completed
        for k, v in other.failed.items():
            self.failed[k] = self.failed.get(k, 0) + v
        self.steps += other.steps
        self.wall_s += other.wall_s
        self.step_ms += other.step_ms
        self.first_step_ms += other.first_step_ms
        self.event_step_ms += other.event_step_ms
        self.event_ts_step_ms += other.event_ts_step_ms
        self.run_ms_per_step += other.run_ms_per_step

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "runs": self.runs,
            "completed": self.completed,
            "failed": self.failed,
            "steps": self.steps,
            "wall_s": round(self.wall_s, 4),
            "steps_per_s": self.steps / self.wall_s if self.wall_s else None,
            "step_ms": dist(self.step_ms),
            "first_step_ms": dist(self.first_step_ms),
            "run_ms_per_step": dist(self.run_ms_per_step),
        }
        if self.event_step_ms:
            out["event_step_ms"] = dist(self.event_step_ms)
            out["event_ts_step_ms"] = dist(self.event_ts_step_ms)
        out.update(self.extra)
        return out


# --------------------------------------------------------------------------- profiling


class Profile:
    """Profiles only the measured windows; pyinstrument if installed, else cProfile."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.kind = ""
        self.sections: list[tuple[str, Any]] = []
        if path is None:
            return
        try:
            import pyinstrument  # noqa: F401

            self.kind = "pyinstrument"
        except ImportError:
            self.kind = "cProfile"

    @contextlib.asynccontextmanager
    async def section(self, label: str):  # type: ignore[no-untyped-def]
        if not self.kind:
            yield
            return
        if self.kind == "pyinstrument":
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0005, async_mode="disabled")
            profiler.start()
            try:
                yield
            finally:
                profiler.stop()
                self.sections.append((label, profiler))
        else:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
            try:
                yield
            finally:
                prof.disable()
                self.sections.append((label, prof))

    def report(self, top: int = 25) -> list[dict[str, Any]]:
        """Writes the full profiles to the file; returns the top functions per section."""
        if not self.kind or self.path is None:
            return []
        out: list[dict[str, Any]] = []
        with self.path.open("w") as fh:
            for label, prof in self.sections:
                fh.write(f"==================== {label} ({self.kind})\n")
                if self.kind == "pyinstrument":
                    fh.write(prof.output_text(unicode=False, color=False, show_all=False))
                    out.append({"section": label, **_pyinstrument_top(prof, top)})
                else:
                    import pstats

                    buf = io.StringIO()
                    stats = pstats.Stats(prof, stream=buf)
                    stats.sort_stats("tottime").print_stats(60)
                    stats.sort_stats("cumulative").print_stats(60)
                    fh.write(buf.getvalue())
                    out.append({"section": label, **_cprofile_top(stats, top)})
        return out


def _pyinstrument_top(profiler: Any, top: int) -> dict[str, Any]:
    session = profiler.last_session
    root = session.root_frame()
    self_time: dict[str, float] = defaultdict(float)
    inclusive: dict[str, float] = defaultdict(float)

    def name(frame: Any) -> str:
        return f"{frame.function} ({frame.file_path_short}:{frame.line_no})"

    def walk(frame: Any, on_path: frozenset[str]) -> None:
        key = name(frame)
        self_time[key] += frame.total_self_time
        if key not in on_path:
            inclusive[key] += frame.time
        for child in frame.children:
            walk(child, on_path | {key})

    if root is not None:
        walk(root, frozenset())
    total = session.duration or 1.0
    return {
        "duration_s": round(session.duration, 3),
        "top_self": [
            {"function": k, "s": round(v, 3), "pct": round(100 * v / total, 1)}
            for k, v in sorted(self_time.items(), key=lambda kv: -kv[1])[:top]
        ],
        "top_inclusive": [
            {"function": k, "s": round(v, 3), "pct": round(100 * v / total, 1)}
            for k, v in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]
        ],
    }


def _cprofile_top(stats: Any, top: int) -> dict[str, Any]:
    rows = []
    for (file, line, fn), (_cc, _nc, tt, ct, _callers) in stats.stats.items():
        rows.append((f"{fn} ({Path(file).name}:{line})", tt, ct))
    return {
        "top_self": [
            {"function": n, "s": round(t, 3)} for n, t, _ in sorted(rows, key=lambda r: -r[1])[:top]
        ],
        "top_inclusive": [
            {"function": n, "s": round(c, 3)} for n, _, c in sorted(rows, key=lambda r: -r[2])[:top]
        ],
    }


# --------------------------------------------------------------------------- agentstream


def resolve_log(spec: str, home: Path) -> tuple[str, str]:
    """(label, log URL) for a --log value."""
    if spec == "sqlite":
        return "sqlite-full", f"sqlite://{home}/log.db"
    if spec == "sqlite-normal":
        return "sqlite-normal", f"sqlite://{home}/log.db?synchronous=normal"
    if spec.startswith("sqlite://"):
        sync = "normal" if "synchronous=normal" in spec else "full"
        return f"sqlite-{sync}", spec
    if spec.startswith("kafka://"):
        return "kafka", spec
    raise SystemExit(
        f"unknown --log {spec!r}: use sqlite, sqlite-normal, embedded, sqlite:///PATH or kafka://"
    )


class Watcher:
    """A consumer of the events topic that never commits: sees plans and terminal events."""

    def __init__(self, runtime: AgentRuntime, consumer: GroupConsumer) -> None:
        self.runtime = runtime
        self.consumer = consumer
        self.plans: dict[bytes, list[float]] = defaultdict(list)
        self.plan_ts: dict[bytes, list[int]] = defaultdict(list)
        self.done: dict[bytes, tuple[float, str]] = {}
        self.waiters: dict[bytes, asyncio.Future[None]] = {}
        self.task: asyncio.Task[None] | None = None
        self._stop = False

    def expect(self, keys: Sequence[bytes]) -> list[asyncio.Future[None]]:
        loop = asyncio.get_running_loop()
        futures = []
        for key in keys:
            future = loop.create_future()
            self.waiters[key] = future
            futures.append(future)
        return futures

    async def run(self) -> None:
        codec = self.runtime.codec
        while not self._stop:
            records = await self.consumer.poll(5000, 0.05)
            seen = time.perf_counter()
            for record in records:
                if record.key is None:
                    continue
                try:
                    kind = await codec.type_of(record.value)
                except PoisonEvent:
                    continue
                if kind == "PlanProposed":
                    self.plans[record.key].append(seen)
                    self.plan_ts[record.key].append(record.timestamp_ms)
                elif kind in TERMINAL_TYPES:
                    self.done.setdefault(record.key, (seen, kind))
                    waiter = self.waiters.pop(record.key, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(None)

    async def stop(self) -> None:
        self._stop = True
        if self.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, 10)
        await self.consumer.stop()


class Breakdown:
    """Wall time spent awaiting selected runtime calls (wrapped on the instances, opt-in):
    shows where a step's time goes, I/O waits included, which a CPU profile does not."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])

    def wrap(self, obj: Any, method: str, label: str) -> None:
        inner = getattr(obj, method)
        slot = self.calls[label]

        async def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return await inner(*args, **kwargs)
            finally:
                slot[0] += 1
                slot[1] += time.perf_counter() - began

        setattr(obj, method, timed)

    def take(self, steps: int) -> dict[str, Any]:
        out = {
            label: {
                "calls": int(n),
                "total_s": round(total, 4),
                "ms_per_call": round(1000 * total / n, 3) if n else None,
                "calls_per_step": round(n / steps, 2) if steps else None,
                "ms_per_step": round(1000 * total / steps, 3) if steps else None,
            }
            for label, (n, total) in sorted(self.calls.items())
        }
        for slot in self.calls.values():
            slot[0], slot[1] = 0, 0.0
        return out


class AgentstreamBench:
    """One runtime over one log, measured at several concurrencies."""

    def __init__(self, log_spec: str, tool_steps: int, workdir: Path, memory: bool = False) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="agentloop-", dir=workdir))
        self.label, self.url = resolve_log(log_spec, self.home)
        self.tool_steps = tool_steps
        self.clock = Clock()
        prefix = f"benchloop{uuid.uuid4().hex[:8]}"
        self.settings = Settings(
            home=self.home,
            log_url=self.url,
            registry_url=f"sqlite://{self.home}/registry.db",
            topics=Topics(prefix=prefix, partitions=4),
        )
        options: dict[str, Any] = {}
        if "memory" in inspect.signature(AgentRuntime.__init__).parameters:
            # Semantic memory adds its tools to the registry and a writer worker: not part of
            # the workload compared here (--runtime-memory measures the runtime's default).
            options["memory"] = None if memory else False
        self.runtime = AgentRuntime(
            self.settings,
            registry=ToolRegistry([NoopTool()]),
            planner=PlannerSettings(default_model="scripted:instant"),
            models=lambda spec: ScriptedModel(self.clock),
            **options,
        )
        self.watcher: Watcher | None = None
        self._counter = 0

    async def start(self, breakdown: Breakdown | None = None) -> None:
        await self.runtime.start()
        self.breakdown = breakdown
        if breakdown is not None:
            rt = self.runtime
            breakdown.wrap(rt.views, "view", "RunViews.view (whole run history, per handled event)")
            breakdown.wrap(rt.log, "read_key", "EventLog.read_key (inside RunViews.view)")
            breakdown.wrap(rt.ledger, "claim", "IdempotencyLedger.claim")
            breakdown.wrap(rt.ledger, "complete", "IdempotencyLedger.complete")
            projector = getattr(rt, "projector", None)
            if projector is not None:
                breakdown.wrap(projector, "step", "Projector.step (views the runtime hosts)")
            for worker in rt.workers:
                name = worker.group.rsplit(".", 1)[-1]
                breakdown.wrap(worker, "step", f"Worker.step {name} (poll + handle + commit)")
                breakdown.wrap(worker._consumer, "commit", f"GroupConsumer.commit {name}")
                breakdown.wrap(worker.handler, "handle", f"Handler.handle {name}")
        consumer = self.runtime.log.consumer(
            f"{self.settings.topics.prefix}.bench-watch", [self.settings.topics.events]
        )
        await consumer.start()
        self.watcher = Watcher(self.runtime, consumer)
        self.watcher.task = asyncio.create_task(self.watcher.run(), name="bench-watch")
        await self.wave(1)  # warm-up: schema ids, consumer group joins, caches

    async def stop(self) -> None:
        if self.watcher is not None:
            await self.watcher.stop()
        await self.runtime.stop()
        shutil.rmtree(self.home, ignore_errors=True)

    def _tasks(self, n: int) -> list[Task]:
        tasks = []
        for _ in range(n):
            self._counter += 1
            goal = GOAL.format(index=self._counter, steps=self.tool_steps)
            tasks.append(Task(goal=goal, tenant="bench", max_steps=self.tool_steps + 5))
        return tasks

    async def _submit(self, tasks: Sequence[Task]) -> None:
        """What `AgentRuntime.submit` does, for many tasks in one append: to the tasks topic,
        where the intake starts the runs."""
        topic = self.settings.topics.tasks
        codec, log = self.runtime.codec, self.runtime.log
        records = [
            OutgoingRecord(topic, t.run_id.encode(), await codec.encode(topic, t.event())) for t in tasks
        ]
        await log.append(records)

    async def wave(self, n: int, time_limit_s: float = MEASURE_TIMEOUT_S) -> Measurement:
        """Submit n runs at once and wait for all of them, or until the time limit: then
        the steps planned within the limit count, over the limit's wall time."""
        assert self.watcher is not None
        tasks = self._tasks(n)
        keys = [t.run_id.encode() for t in tasks]
        futures = self.watcher.expect(keys)
        start = time.perf_counter()
        if n == 1:
            await self.runtime.submit(tasks[0])
        else:
            await self._submit(tasks)
        _done, pending = await asyncio.wait(futures, timeout=time_limit_s)
        if pending:
            end = start + time_limit_s
        else:
            end = max((self.watcher.done[k][0] for k in keys if k in self.watcher.done), default=start)
        self.runtime.check_health()
        m = Measurement(runs=n, wall_s=end - start)
        if pending:
            m.failed["not_done_within_time_limit"] = len(pending)
            m.extra["time_limited"] = True
            m.steps = sum(
                sum(1 for t in self.watcher.plans.get(k, []) if t <= end)
                for k in keys
                if k not in self.watcher.done
            )
        for task, key in zip(tasks, keys, strict=True):
            calls = self.clock.calls.pop(task.goal, [])
            m.step_ms += gaps_ms(calls)
            if calls:
                m.first_step_ms.append((calls[0] - start) * 1000)
            plans = self.watcher.plans.pop(key, [])
            ts = self.watcher.plan_ts.pop(key, [])
            m.event_step_ms += gaps_ms([start, *plans])
            m.event_ts_step_ms += [float(b - a) for a, b in itertools.pairwise(ts)]
            finished = self.watcher.done.get(key)
            if finished is None:
                self.watcher.waiters.pop(key, None)
                continue
            seen, kind = finished
            if kind == "RunCompleted" and len(calls) == self.tool_steps + 1:
                m.completed += 1
                m.steps += len(plans)
                m.run_ms_per_step.append((seen - start) * 1000 / max(1, len(plans)))
            else:
                reason = kind if kind != "RunCompleted" else f"calls={len(calls)}"
                m.failed[reason] = m.failed.get(reason, 0) + 1
        return m

    def worker_stats(self) -> dict[str, Any]:
        return {
            w.group.rsplit(".", 1)[-1]: {
                "batches": w.stats.batches,
                "records": w.stats.records,
                "handled": w.stats.handled,
                "dead_lettered": w.stats.dead_lettered,
            }
            for w in self.runtime.workers
        }


async def measure_agentstream(
    log_spec: str, args: argparse.Namespace, profile: Profile
) -> tuple[str, dict[int, Measurement], dict[str, Any]]:
    bench = AgentstreamBench(log_spec, args.tool_steps, args.workdir, args.runtime_memory)
    results: dict[int, Measurement] = {}
    breakdown = Breakdown() if args.breakdown else None
    await bench.start(breakdown)
    if breakdown is not None:
        breakdown.take(1)
    try:
        for c in args.concurrency:
            load = os.getloadavg()
            gc.collect()
            async with profile.section(f"agentstream {bench.label} concurrency={c}"):
                if c == 1:
                    m = Measurement()
                    began = time.perf_counter()
                    for i in range(args.serial_runs):
                        left = args.time_limit - (time.perf_counter() - began)
                        if i >= 3 and left <= 0:
                            m.extra["serial_runs_cut_by_time_limit"] = True
                            break
                        m.absorb(await bench.wave(1, max(left, 60.0)))
                else:
                    m = await bench.wave(c, args.time_limit)
            m.extra["loadavg_before"] = [round(x, 2) for x in load]
            if breakdown is not None:
                m.extra["breakdown"] = breakdown.take(m.steps)
            results[c] = m
            if m.extra.get("time_limited") and c != args.concurrency[-1]:
                # A backlog is left behind: measure the next concurrency on a fresh log.
                await bench.stop()
                bench = AgentstreamBench(log_spec, args.tool_steps, args.workdir, args.runtime_memory)
                breakdown = Breakdown() if args.breakdown else None
                await bench.start(breakdown)
            print(
                f"  agentstream {bench.label:13s} c={c:<5d} {m.steps / m.wall_s:8.1f} steps/s"
                f"  step p50 {percentile(m.step_ms, 50) or 0:7.2f} ms  (ok {m.completed}/{m.runs})",
                file=sys.stderr,
            )
        stats = bench.worker_stats()
    finally:
        await bench.stop()
    return bench.label, results, stats


# --------------------------------------------------------------------------- LangGraph


class LangGraphBench:
    """The same workload on the LangGraph peer (benchmarks/peers/langgraph_peer.py)."""

    def __init__(self, durability: str, tool_steps: int, workdir: Path) -> None:
        self.durability = durability
        self.tool_steps = tool_steps
        self.home = Path(tempfile.mkdtemp(prefix="agentloop-lg-", dir=workdir))
        self.clock = Clock()
        self._counter = 0
        self.synchronous: int | None = None

    async def start(self) -> None:
        from langchain_core.messages import AIMessage, ToolMessage
        from langchain_core.tools import tool

        clock = self.clock

        async def agent(state: dict[str, Any]) -> dict[str, Any]:
            now = time.perf_counter()
            messages = state["messages"]
            goal = str(messages[0].content)
            results = sum(1 for m in messages if isinstance(m, ToolMessage))
            clock.calls[goal].append(now)
            text, args = decide(goal, results)
            calls = [{"name": TOOL_NAME, "args": args, "id": f"c{results}"}] if args is not None else []
            return {"messages": [AIMessage(content=text, tool_calls=calls)]}

        @tool(TOOL_NAME)
        async def noop(i: int) -> dict[str, bool]:
            """Does nothing and returns at once."""
            return {"ok": True}

        self.agent = LangGraphAgent(agent, [noop], self.home / "checkpoints.db", self.durability)
        await self.agent.start()
        self.synchronous = self.agent.synchronous
        await self.wave(1)

    async def stop(self) -> None:
        await self.agent.stop()
        shutil.rmtree(self.home, ignore_errors=True)

    async def wave(self, n: int) -> Measurement:
        goals = []
        for _ in range(n):
            self._counter += 1
            goals.append(GOAL.format(index=self._counter, steps=self.tool_steps))
        finished: dict[str, float] = {}
        outcome: dict[str, str] = {}

        async def one(goal: str) -> None:
            try:
                messages = await self.agent.invoke(goal)
                last = messages[-1]
                outcome[goal] = "ok" if str(last.content).startswith("done after") else "wrong_answer"
            except Exception as exc:
                outcome[goal] = type(exc).__name__
            finished[goal] = time.perf_counter()

        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(one(g) for g in goals)), MEASURE_TIMEOUT_S)
        end = max(finished.values(), default=start)
        m = Measurement(runs=n, wall_s=end - start)
        for goal in goals:
            calls = self.clock.calls.pop(goal, [])
            m.step_ms += gaps_ms(calls)
            if calls:
                m.first_step_ms.append((calls[0] - start) * 1000)
            if outcome.get(goal) == "ok" and len(calls) == self.tool_steps + 1:
                m.completed += 1
                m.steps += len(calls)
                m.run_ms_per_step.append((finished[goal] - start) * 1000 / len(calls))
            else:
                reason = outcome.get(goal, "missing")
                reason = reason if reason != "ok" else f"calls={len(calls)}"
                m.failed[reason] = m.failed.get(reason, 0) + 1
        return m


async def measure_langgraph(
    durability: str, args: argparse.Namespace, profile: Profile
) -> tuple[str, dict[int, Measurement], dict[str, Any]]:
    bench = LangGraphBench(durability, args.tool_steps, args.workdir)
    label = f"langgraph-sqlite-{durability}"
    results: dict[int, Measurement] = {}
    await bench.start()
    try:
        for c in args.concurrency:
            load = os.getloadavg()
            gc.collect()
            async with profile.section(f"{label} concurrency={c}") if args.profile_langgraph else _null():
                if c == 1:
                    m = Measurement()
                    for _ in range(args.serial_runs):
                        m.absorb(await bench.wave(1))
                else:
                    m = await bench.wave(c)
            m.extra["loadavg_before"] = [round(x, 2) for x in load]
            results[c] = m
            print(
                f"  {label:25s} c={c:<5d} {m.steps / m.wall_s:8.1f} steps/s"
                f"  step p50 {percentile(m.step_ms, 50) or 0:7.2f} ms  (ok {m.completed}/{m.runs})",
                file=sys.stderr,
            )
    finally:
        await bench.stop()
    return label, results, {"sqlite_synchronous": bench.synchronous}


@contextlib.asynccontextmanager
async def _null():  # type: ignore[no-untyped-def]
    yield


# --------------------------------------------------------------------------- report


def source_state() -> dict[str, Any]:
    """The commit measured, and the tracked files that differed from it (relative paths)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout if done.returncode == 0 else ""

    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines() if line]
    commit = git("rev-parse", "--short", "HEAD").strip()
    return {"commit": commit or None, "modified_tracked_files": changed}


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def combine(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over repeats of the headline numbers, with the spread (min..max)."""

    def series(path: tuple[str, ...]) -> list[float]:
        out = []
        for r in repeats:
            value: Any = r
            for p in path:
                value = value.get(p) if isinstance(value, dict) else None
            if isinstance(value, (int, float)):
                out.append(float(value))
        return out

    def agg(path: tuple[str, ...]) -> dict[str, float | None]:
        values = series(path)
        if not values:
            return {"median": None, "min": None, "max": None}
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    return {
        "steps_per_s": agg(("steps_per_s",)),
        "step_ms_p50": agg(("step_ms", "p50")),
        "step_ms_p95": agg(("step_ms", "p95")),
        "event_step_ms_p50": agg(("event_step_ms", "p50")),
        "event_step_ms_p95": agg(("event_step_ms", "p95")),
        "run_ms_per_step_p50": agg(("run_ms_per_step", "p50")),
        "run_ms_per_step_p95": agg(("run_ms_per_step", "p95")),
        "first_step_ms_p50": agg(("first_step_ms", "p50")),
        "runs_ok": f"{sum(r['completed'] for r in repeats)}/{sum(r['runs'] for r in repeats)}"
        + (" (cut at time limit)" if any(r.get("time_limited") for r in repeats) else ""),
    }


def comparisons(results: list[dict[str, Any]], concurrency: Sequence[int]) -> list[dict[str, Any]]:
    rows = []
    lgs = [r for r in results if r["system"] == "langgraph"]
    ass = [r for r in results if r["system"] == "agentstream"]
    for a in ass:
        for lg in lgs:
            for c in concurrency:
                sa = a["by_concurrency"].get(str(c), {}).get("combined")
                sl = lg["by_concurrency"].get(str(c), {}).get("combined")
                if not sa or not sl:
                    continue

                def ratio(x: float | None, y: float | None) -> float | None:
                    return round(x / y, 3) if x and y else None

                rows.append(
                    {
                        "concurrency": c,
                        "agentstream": a["config"],
                        "langgraph": lg["config"],
                        "step_p50_speedup": ratio(sl["step_ms_p50"]["median"], sa["step_ms_p50"]["median"]),
                        "step_p95_speedup": ratio(sl["step_ms_p95"]["median"], sa["step_ms_p95"]["median"]),
                        "steps_per_s_ratio": ratio(sa["steps_per_s"]["median"], sl["steps_per_s"]["median"]),
                        "run_wall_per_step_speedup": ratio(
                            sl["run_ms_per_step_p50"]["median"], sa["run_ms_per_step_p50"]["median"]
                        ),
                    }
                )
    return rows


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}x"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Machine: {report['machine']['nproc']} CPUs ({report['machine']['cpu_model']}), "
        f"load average at start {report['machine']['loadavg']}, at end {report['loadavg_end']}; "
        f"Python {report['machine']['python']}; agentstream at {report['source']['commit']}"
        f"{' (+ local changes)' if report['source']['modified_tracked_files'] else ''}. "
        f"Workload: {report['workload']['tool_steps']} tool steps + "
        f"1 answer = {report['workload']['steps_per_run']} planner steps per run; concurrency 1 = "
        f"{report['workload']['serial_runs']} serial runs; {report['workload']['repeats']} repeats "
        "(median, [min-max]).",
        "",
        "| system | config | runs in flight | step p50 ms | step p95 ms | event step p50/p95 ms "
        "| run wall / step p50 ms | steps/s | runs ok |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        for c, entry in r["by_concurrency"].items():
            s = entry["combined"]

            def med(key: str, digits: int = 2, s: dict[str, Any] = s, n: int = len(entry["repeats"])) -> str:
                v = s[key]
                if v["median"] is None:
                    return "-"
                if n > 1:
                    return f"{_f(v['median'], digits)} [{_f(v['min'], digits)}-{_f(v['max'], digits)}]"
                return _f(v["median"], digits)

            sps_digits = 0 if (s["steps_per_s"]["median"] or 0) >= 100 else 1
            event = (
                f"{_f(s['event_step_ms_p50']['median'])} / {_f(s['event_step_ms_p95']['median'])}"
                if s["event_step_ms_p50"]["median"] is not None
                else "-"
            )
            lines.append(
                f"| {r['system']} | {r['config']} | {c} | {med('step_ms_p50')} | {med('step_ms_p95')} "
                f"| {event} | {med('run_ms_per_step_p50')} | {med('steps_per_s', sps_digits)} "
                f"| {s['runs_ok']} |"
            )
    if report["comparison"]:
        lines += [
            "",
            "| runs in flight | agentstream | vs LangGraph | step p50: LG / AS | step p95: LG / AS "
            "| run wall/step p50: LG / AS | steps/s: AS / LG |",
            "|---:|---|---|---:|---:|---:|---:|",
        ]
        for row in report["comparison"]:
            lines.append(
                f"| {row['concurrency']} | {row['agentstream']} | {row['langgraph']} "
                f"| {_x(row['step_p50_speedup'])} | {_x(row['step_p95_speedup'])} "
                f"| {_x(row['run_wall_per_step_speedup'])} | {_x(row['steps_per_s_ratio'])} |"
            )
    if report.get("targets"):
        lines += ["", "| target | measured | met |", "|---|---|---|"]
        for t in report["targets"]:
            lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'NO'} |")
    if report.get("profile"):
        for section in report["profile"]:
            lines += [
                "",
                f"Profile: {section['section']} - top self time",
                "",
                "| function | s | % |",
                "|---|---:|---:|",
            ]
            for row in section["top_self"][:15]:
                lines.append(f"| `{row['function']}` | {row['s']} | {row.get('pct', '')} |")
    return "\n".join(lines)


def targets(results: list[dict[str, Any]], comparison: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    embedded = [r for r in results if r["system"] == "agentstream" and r["config"].startswith("sqlite")]
    for r in embedded:
        for c, entry in r["by_concurrency"].items():
            p50 = entry["combined"]["step_ms_p50"]["median"]
            if p50 is not None:
                out.append(
                    {
                        "target": f"p50 overhead <= 2 ms/step ({r['config']}, {c} in flight)",
                        "measured": f"{p50:.2f} ms",
                        "met": p50 <= 2.0,
                    }
                )
        sps = r["by_concurrency"].get("1000", {}).get("combined", {}).get("steps_per_s", {}).get("median")
        if sps is not None:
            out.append(
                {
                    "target": f">= 2,000 steps/s across 1,000 runs ({r['config']})",
                    "measured": f"{sps:,.0f} steps/s",
                    "met": sps >= 2000,
                }
            )
    for row in comparison:
        if row["agentstream"].startswith("sqlite") and row["step_p50_speedup"] is not None:
            out.append(
                {
                    "target": f">= 2x faster than {row['langgraph']} ({row['agentstream']}, "
                    f"{row['concurrency']} in flight; step p50 / steps/s)",
                    "measured": f"{_x(row['step_p50_speedup'])} / {_x(row['steps_per_s_ratio'])}",
                    "met": row["step_p50_speedup"] >= 2 and (row["steps_per_s_ratio"] or 0) >= 2,
                }
            )
    return out


# --------------------------------------------------------------------------- main


async def run(args: argparse.Namespace) -> dict[str, Any]:
    profile = Profile(args.profile)
    lg_versions = None if args.no_langgraph else langgraph_versions()
    if not args.no_langgraph and lg_versions is None:
        print(
            "LangGraph is not installed: skipping the LangGraph comparison. To include it:\n"
            f"    {INSTALL_HINT}",
            file=sys.stderr,
        )
    report: dict[str, Any] = {
        "bench": "agent_loop",
        "machine": machine(),
        "source": source_state(),
        "versions": {"langgraph": lg_versions},
        "workload": {
            "tool_steps": args.tool_steps,
            "steps_per_run": args.tool_steps + 1,
            "concurrency": args.concurrency,
            "serial_runs": args.serial_runs,
            "repeats": args.repeats,
            "agentstream_semantic_memory": "runtime default" if args.runtime_memory else "off",
        },
        "results": [],
    }
    plans: list[tuple[str, str]] = [("agentstream", spec) for spec in args.logs]
    if lg_versions is not None:
        plans += [("langgraph", d) for d in args.langgraph_durability]
    collected: dict[tuple[str, str], dict[str, Any]] = {}
    # Repeats are interleaved (all configs, then all configs again) so a burst of load from
    # other work on the machine does not land on one configuration only.
    for rep in range(args.repeats):
        for system, spec in plans:
            print(f"repeat {rep + 1}/{args.repeats}: {system} {spec}", file=sys.stderr)
            if system == "agentstream":
                label, results, info = await measure_agentstream(spec, args, profile)
            else:
                label, results, info = await measure_langgraph(spec, args, profile)
            entry = collected.setdefault(
                (system, label), {"system": system, "config": label, "info": [], "by_concurrency": {}}
            )
            entry["info"].append(info)
            for c, m in results.items():
                entry["by_concurrency"].setdefault(str(c), {"repeats": []})["repeats"].append(m.summary())
    for entry in collected.values():
        for by_c in entry["by_concurrency"].values():
            by_c["combined"] = combine(by_c["repeats"])
        report["results"].append(entry)
    report["comparison"] = comparisons(report["results"], args.concurrency)
    report["targets"] = targets(report["results"], report["comparison"])
    report["profile"] = profile.report()
    report["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--log",
        action="append",
        dest="logs",
        help="agentstream log: sqlite (synchronous=full), sqlite-normal, embedded (both), "
        "sqlite:///PATH[?synchronous=normal] or kafka://host:port; repeatable (default: embedded)",
    )
    parser.add_argument("--concurrency", default="1,100,1000", help="runs in flight, comma-separated")
    parser.add_argument("--tool-steps", type=int, default=5, help="tool calls per run before the answer")
    parser.add_argument(
        "--serial-runs", type=int, default=30, help="runs measured one after another at concurrency 1"
    )
    parser.add_argument("--repeats", type=int, default=2, help="times each configuration is measured")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=180.0,
        help="seconds one agentstream measurement may take; a wave still running then is cut and"
        " counts the steps planned so far (serial runs stop after at least 3)",
    )
    parser.add_argument("--no-langgraph", action="store_true", help="skip the LangGraph comparison")
    parser.add_argument(
        "--langgraph-durability",
        default="async,sync",
        help="LangGraph durability modes to measure, comma-separated (async is LangGraph's default)",
    )
    parser.add_argument("--profile", type=Path, help="profile the agentstream measurements into this file")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="time the awaited runtime calls (views, log reads, commits, ledger) per step; adds a"
        " little overhead, so headline numbers are best taken without it",
    )
    parser.add_argument(
        "--runtime-memory",
        action="store_true",
        help="leave the runtime's semantic memory at its default (its tools join the registry and"
        " a memory writer runs); off by default so both systems run the same one-tool agent",
    )
    parser.add_argument("--profile-langgraph", action="store_true", help="profile the LangGraph ones too")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where temporary logs go (default: system temp)"
    )
    parser.add_argument(
        "--markdown", action="store_true", help="also print a markdown table (to stdout, after the JSON)"
    )
    args = parser.parse_args()
    logs: list[str] = []
    for spec in args.logs or ["embedded"]:
        logs += ["sqlite", "sqlite-normal"] if spec == "embedded" else [spec]
    args.logs = logs
    args.concurrency = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    args.langgraph_durability = [d.strip() for d in args.langgraph_durability.split(",") if d.strip()]
    args.workdir = Path(args.workdir or tempfile.gettempdir())
    report = asyncio.run(run(args))
    print(json.dumps(report, indent=1))
    if args.markdown:
        print()
        print(markdown(report))


if __name__ == "__main__":
    main()
