"""Do runs wait for each other? The agent loop with slow and many concurrent model calls.

Commands (from the repository root; `pip install -e '.[dev,gateway,bench]'` for uvicorn
and the LangGraph peer; without langgraph its rows are skipped with a note):

    python benchmarks/bench_concurrency.py slow-neighbour --log sqlite
    python benchmarks/bench_concurrency.py slow-neighbour --log kafka://127.0.0.1:19092 \\
        --registry http://127.0.0.1:18081 --system agentstream
    python benchmarks/bench_concurrency.py many-runs --runs 2000
    python benchmarks/bench_concurrency.py many-runs            # 10,000 runs
    python benchmarks/bench_concurrency.py step-overhead --processes 1
    python benchmarks/bench_concurrency.py step-overhead --processes 2   # needs serve --processes
    python benchmarks/bench_concurrency.py model-server --port 8000 --latency slow=20

Every run's model is a scripted loopback server speaking the OpenAI Chat Completions wire
format (`model-server`, started in a child process so it never competes with the
measured event loop): it answers a goal "bench TAG: call calculator N times, then answer"
with a `calculator` tool call while the request holds fewer than N tool results, then with
a final answer; deterministic from the request. Each model name has its own latency
(`--latency NAME=SECONDS`). agentstream runs through its public runtime (`AgentRuntime`,
`Task`, `Settings`) in this process, with the real OpenAI adapter over one shared httpx
pool without a connection cap (httpx's default of 100 would cap concurrent calls before
the runtime does). The LangGraph peer (benchmarks/peers/langgraph_peer.py, AsyncSqliteSaver,
one process) asks the same server through the same pool. All traffic is on 127.0.0.1.

Workloads:

  * slow-neighbour: one run whose model (`slow`) takes 20 s a call (1 tool step + the
    answer: 2 model calls), then, 1 s later, 100 quick runs (model `fast`, no latency,
    2 tool steps). Reports the quick runs' completion times from their submission
    (p50/p95/p99/max) and how many finished before the slow run.
  * many-runs: N runs at once (default 10,000), 5 tool steps each, 1 s per model call.
    Wall time until all are terminal, this process's peak RSS (the runtime; the model
    server is another process), events/s appended, and a loss check: every run completed
    with 6 plans, every event type counted against what 6 steps produce, and the server
    saw exactly 6 model calls per run.
  * step-overhead: a model with no latency: one run of --steps tool steps in sequence
    (p50/p95 of the time between two model calls of the run: everything the runtime does
    in a step, plus one loopback HTTP round trip), then --runs runs in flight (steps/s).
    `--processes N` runs the workers as `agentstream serve --processes N` in a child
    process (skipped with a note when `serve` has no such option); `--serve` does that
    with the plain `agentstream serve`.

Each system gets a model server of its own, which also reports the peak of model calls
in flight (how many calls the system had outstanding at once). Systems of one invocation
share this process: RSS start and peak of a later one include what an earlier one left;
pass one --system per invocation for absolute figures. Many runs in flight hold as many
connections open: raise `ulimit -n` above --runs (plus a few hundred) when needed.

Every wait is bounded by --time-limit; a run not terminal by then counts as not done.
The output ends with markdown rows for docs/benchmarks.md (machine line first); --json
FILE writes everything measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import os
import platform
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

if __package__ in (None, ""):  # run as a script: the repository root holds benchmarks and tests
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from agentstream.config import Settings
from agentstream.runtime import TERMINAL_TYPES, AgentRuntime, Task
from benchmarks.bench_agent_loop import machine, percentile, resolve_log, source_state
from benchmarks.peers import langgraph_peer
from handlers.intake import run_id_for
from handlers.llm.base import ModelClient, RetryingModel
from handlers.llm.openai import OpenAIModel
from handlers.planner import PlannerSettings
from handlers.tools.base import ToolRegistry
from handlers.tools.calculator import CalculatorTool, evaluate
from streams.backends import open_log
from streams.codec import EventCodec
from streams.errors import PoisonEvent
from streams.log import EventLog, OutgoingRecord
from streams.registry import open_registry
from streams.topics import Topics
from tests.llm_servers import OPENAI_PATH, openai_reply

GOAL = "bench {tag}: call calculator {steps} times, then answer"
_GOAL = re.compile(r"bench (\S+): call calculator (\d+) times")
TENANT = "bench"
ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- model server


def scripted_reply(request: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(run tag, Chat Completions body): a calculator call per missing tool result, then
    the answer. Decided from the request alone, so any number of servers agree."""
    messages = request.get("messages") or []
    goal = next((str(m.get("content") or "") for m in messages if m.get("role") == "user"), "")
    match = _GOAL.search(goal)
    tag, wanted = (match.group(1), int(match.group(2))) if match else ("", 0)
    done = sum(1 for m in messages if m.get("role") == "tool")
    model = str(request.get("model") or "")
    if done < wanted:
        k = done + 1
        call = (f"call_{k}", "calculator", {"expression": f"{k} * {k} + 1"})
        return tag, openai_reply(f"step {k}: calculating", [call], model=model).body
    return tag, openai_reply(f"done after {done} tool calls", model=model).body


class ScriptedChatServer:
    """An ASGI app speaking OpenAI Chat Completions for the scripted calculator agent,
    with a latency per model name. `GET /stats` returns what it has served."""

    def __init__(self, latency: Mapping[str, float], default_latency: float = 0.0) -> None:
        self.latency = dict(latency)
        self.default_latency = default_latency
        self.by_model: Counter[str] = Counter()
        self.calls: dict[str, list[float]] = defaultdict(list)
        """Arrival times (time.monotonic, shared by the processes of a machine) by run tag."""
        self.in_flight = 0
        self.peak_in_flight = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "GET" and scope["path"] == "/stats":
            stats = {
                "by_model": dict(self.by_model),
                "peak_in_flight": self.peak_in_flight,
                "calls": self.calls,
            }
            await _respond(send, 200, stats)
            return
        if scope["method"] != "POST" or scope["path"] != OPENAI_PATH:
            await _respond(send, 404, {"error": {"type": "not_found", "message": scope["path"]}})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        arrived = time.monotonic()
        try:
            request = json.loads(body)
            tag, reply = scripted_reply(request)
        except (ValueError, AttributeError) as exc:
            await _respond(send, 400, {"error": {"type": "invalid_request_error", "message": str(exc)}})
            return
        model = str(request.get("model") or "")
        self.by_model[model] += 1
        self.calls[tag].append(arrived)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.latency.get(model, self.default_latency))
        finally:
            self.in_flight -= 1
        await _respond(send, 200, reply)


async def _respond(send: Any, status: int, body: Any) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def serve_model(
    host: str, port: int, latency: Mapping[str, float], default: float, lifetime_s: float
) -> None:
    """Serve the scripted model until SIGTERM or `lifetime_s`; prints its URL first."""
    import uvicorn

    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so, and without
    # it Nagle holds each response body for the client's delayed ACK (40 ms a call).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(
        ScriptedChatServer(latency, default),
        log_level="warning",
        access_log=False,
        lifespan="off",
        backlog=16384,
        timeout_keep_alive=120,
    )
    server = uvicorn.Server(config)
    print(f"http://{host}:{sock.getsockname()[1]}", flush=True)

    async def bounded() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        done, _ = await asyncio.wait([task], timeout=lifetime_s)
        if not done:
            server.should_exit = True
            await asyncio.wait_for(task, 30)

    asyncio.run(bounded())


class ModelServerProcess:
    """The scripted model server in a child process (context manager)."""

    def __init__(self, latency: Mapping[str, float], lifetime_s: float, default_latency: float = 0.0) -> None:
        self.latency = dict(latency)
        self.lifetime_s = lifetime_s
        self.default_latency = default_latency
        self.url = ""
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> ModelServerProcess:
        cmd = [sys.executable, str(Path(__file__).resolve()), "model-server", "--port", "0"]
        cmd += ["--lifetime", str(self.lifetime_s), "--default-latency", str(self.default_latency)]
        for name, seconds in self.latency.items():
            cmd += ["--latency", f"{name}={seconds}"]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], 30)
        line = self._proc.stdout.readline().strip() if ready else ""
        if not line.startswith("http://127.0.0.1:"):
            self.__exit__()
            raise RuntimeError(f"the model server did not start (said {line!r})")
        self.url = line
        return self

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as its base URL."""
        return f"{self.url}/v1"

    def stats(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/stats", timeout=60)
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)


def model_pool() -> httpx.AsyncClient:
    """One connection pool for every model call of a system, without a connection cap."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    return httpx.AsyncClient(timeout=httpx.Timeout(300.0), limits=limits)


# --------------------------------------------------------------------------- the systems


@dataclass(frozen=True)
class RunSpec:
    """One run of a workload: its model (a name the server knows) and tool steps."""

    model: str
    tool_steps: int
    task_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def tag(self) -> str:
        """The run's id: the one the intake derives from the task (`Task.run_id`)."""
        return run_id_for(TENANT, None, self.task_id)

    @property
    def goal(self) -> str:
        return GOAL.format(tag=self.tag, steps=self.tool_steps)


@dataclass
class Outcome:
    """How a run ended: when it was seen ending (perf_counter), the terminal event type
    (RunCompleted, RunFailed, ... or an exception's name), and its planner steps."""

    ended_at: float
    status: str
    plans: int


class System(Protocol):
    """An agent system under test: starts runs, tells when each ended."""

    label: str
    backend: str
    outcomes: dict[str, Outcome]

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def submit(self, runs: Sequence[RunSpec]) -> float:
        """Start the runs; returns the perf_counter time at which they were submitted."""

    async def wait(self, runs: Sequence[RunSpec], timeout_s: float) -> int:
        """Wait until every run ended or the timeout; returns how many did not end."""


class EventTally:
    """A consumer of the events topic that never commits: counts each run's events by
    type and notes when its terminal event is seen."""

    def __init__(self, log_: EventLog, codec: EventCodec, topics: Topics) -> None:
        self.log = log_
        self.codec = codec
        self.topics = topics
        self.types: dict[str, Counter[str]] = defaultdict(Counter)
        self.outcomes: dict[str, Outcome] = {}
        self.changed = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._consumer = self.log.consumer(f"{self.topics.prefix}.bench-tally", [self.topics.events])
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="bench-tally")

    async def _run(self) -> None:
        while not self._stop.is_set():
            records = await self._consumer.poll(5000, 0.05)
            seen = time.perf_counter()
            for record in records:
                if record.key is None:
                    continue
                try:
                    kind = await self.codec.type_of(record.value)
                except PoisonEvent:
                    kind = "undecodable"
                run = record.key.decode()
                counts = self.types[run]
                counts[kind] += 1
                if kind in TERMINAL_TYPES and run not in self.outcomes:
                    self.outcomes[run] = Outcome(seen, kind, counts["PlanProposed"])
                    self.changed.set()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 10)
        await self._consumer.stop()


async def _wait_for(
    outcomes: Mapping[str, Outcome], changed: asyncio.Event, tags: set[str], timeout_s: float
) -> int:
    deadline = time.perf_counter() + timeout_s
    while True:
        left = [t for t in tags if t not in outcomes]
        remaining = deadline - time.perf_counter()
        if not left or remaining <= 0:
            return len(left)
        changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), min(remaining, 1.0))


def serve_supports_processes() -> bool:
    """Whether `agentstream serve` takes --processes."""
    from click.testing import CliRunner

    from agentstream.cli import main

    result = CliRunner().invoke(main, ["serve", "--help"])
    return "--processes" in result.output


class AgentstreamSystem:
    """agentstream's runtime over one log: in this process (the public AgentRuntime), or
    `agentstream serve` in a child process (`serve_processes`), the model at the loopback
    server."""

    label = "agentstream"

    def __init__(
        self,
        log_spec: str,
        registry_url: str | None,
        model_base_url: str,
        workdir: Path,
        *,
        default_model: str = "fast",
        serve_processes: int | None = None,
    ) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="benchconc-", dir=workdir))
        self.backend, log_url = resolve_log(log_spec, self.home)
        self.settings = Settings(
            home=self.home,
            log_url=log_url,
            registry_url=registry_url or f"sqlite://{self.home}/registry.db",
            topics=Topics(prefix=f"benchconc{uuid.uuid4().hex[:8]}", partitions=4),
            store_url=f"sqlite://{self.home}/views.db",
            ledger_url=f"sqlite://{self.home}/ledger.db",
            # As for `agentstream serve`: how many model calls may be in flight at once.
            model_slots=int(os.environ.get("AGENTSTREAM_MODEL_SLOTS", "256")),
        )
        self.model_base_url = model_base_url
        self.default_model = default_model
        self.serve_processes = serve_processes
        self.runtime: AgentRuntime | None = None
        self.child: subprocess.Popen[bytes] | None = None
        self.outcomes: dict[str, Outcome] = {}

    def _model(self, spec: str) -> ModelClient:
        name = spec.partition(":")[2] or spec
        # The adapter's own connection pools, as in production.
        return RetryingModel(OpenAIModel(name, api_key="bench", base_url=self.model_base_url, timeout=300.0))

    async def start(self) -> None:
        if self.serve_processes is None:
            self.runtime = AgentRuntime(
                self.settings,
                registry=ToolRegistry([CalculatorTool()]),
                planner=PlannerSettings(default_model=f"openai:{self.default_model}"),
                models=self._model,
                memory=False,
            )
            await self.runtime.start()
            self.log, self.codec = self.runtime.log, self.runtime.codec
        else:
            self.log = open_log(self.settings.log_url)
            self.registry = open_registry(self.settings.registry_url)
            self.codec = EventCodec(self.registry)
            for spec in self.settings.topics.specs():
                await self.log.create_topic(spec)
            self._start_child()
        self.tally = EventTally(self.log, self.codec, self.settings.topics)
        await self.tally.start()
        self.outcomes = self.tally.outcomes
        warm = RunSpec(self.default_model, 1)
        await self.submit([warm])
        if await self.wait([warm], 120):
            raise RuntimeError("the warm-up run did not end within 120 s")

    def _start_child(self) -> None:
        env = {
            **os.environ,
            "AGENTSTREAM_HOME": str(self.home),
            "AGENTSTREAM_LOG_URL": self.settings.log_url,
            "AGENTSTREAM_REGISTRY_URL": self.settings.registry_url,
            "AGENTSTREAM_STORE_URL": self.settings.store_url,
            "AGENTSTREAM_LEDGER_URL": self.settings.ledger_url,
            "AGENTSTREAM_TOPIC_PREFIX": self.settings.topics.prefix,
            "AGENTSTREAM_PARTITIONS": str(self.settings.topics.partitions),
            "OPENAI_BASE_URL": self.model_base_url,
            "OPENAI_API_KEY": "bench",
        }
        cmd = [
            sys.executable,
            "-c",
            "from agentstream.cli import main; main()",
            "serve",
            "--model",
            f"openai:{self.default_model}",
        ]
        if self.serve_processes and self.serve_processes > 1:
            cmd += ["--processes", str(self.serve_processes)]
        self.child = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True)

    async def stop(self) -> None:
        with contextlib.suppress(AttributeError):
            await self.tally.stop()
        if self.child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.child.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(self.child.wait, 30)
            except subprocess.TimeoutExpired:
                os.killpg(self.child.pid, signal.SIGKILL)
                self.child.wait(10)
            await self.log.close()
            await self.registry.aclose()
        elif self.runtime is not None:
            await self.runtime.stop()
        shutil.rmtree(self.home, ignore_errors=True)

    async def submit(self, runs: Sequence[RunSpec]) -> float:
        tasks = [
            Task(
                goal=r.goal,
                tenant=TENANT,
                model=f"openai:{r.model}",
                max_steps=r.tool_steps + 5,
                tools=["calculator"],
                task_id=r.task_id,
            )
            for r in runs
        ]
        began = time.perf_counter()
        if len(tasks) == 1 and self.runtime is not None:
            await self.runtime.submit(tasks[0])
        else:
            # What AgentRuntime.submit does, for many tasks in one append.
            topic = self.settings.topics.events
            await self.log.append(
                [
                    OutgoingRecord(topic, t.run_id.encode(), await self.codec.encode(topic, t.event()))
                    for t in tasks
                ]
            )
        return began

    async def wait(self, runs: Sequence[RunSpec], timeout_s: float) -> int:
        if self.runtime is not None:
            self.runtime.check_health()
        elif self.child is not None and self.child.poll() is not None:
            raise RuntimeError(f"agentstream serve exited with {self.child.returncode}")
        return await _wait_for(self.outcomes, self.tally.changed, {r.tag for r in runs}, timeout_s)

    def dead_lettered(self) -> int | None:
        if self.runtime is None:
            return None
        return sum(w.stats.dead_lettered for w in self.runtime.workers)


class LangGraphSystem:
    """The LangGraph peer in this process, its model at the loopback server."""

    label = "langgraph"

    def __init__(self, durability: str, model_base_url: str, workdir: Path) -> None:
        self.durability = durability
        self.backend = f"sqlite, durability={durability}"
        self.model_base_url = model_base_url
        self.home = Path(tempfile.mkdtemp(prefix="benchconc-lg-", dir=workdir))
        self.outcomes: dict[str, Outcome] = {}
        self.changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        from langchain_core.tools import tool

        @tool("calculator")
        def calculator(expression: str) -> str:
            """Evaluate an arithmetic expression exactly once and return the number."""
            return json.dumps({"expression": expression, "result": evaluate(expression)})

        self.pool = model_pool()
        schema = {
            "type": "function",
            "function": {
                "name": "calculator",
                "description": CalculatorTool.SPEC.description,
                "parameters": CalculatorTool.SPEC.parameters,
            },
        }
        node = langgraph_peer.openai_chat_node(self.pool, self.model_base_url, [schema])
        self.agent = langgraph_peer.LangGraphAgent(
            node, [calculator], self.home / "checkpoints.db", self.durability
        )
        await self.agent.start()
        warm = RunSpec("fast", 1)
        await self.submit([warm])
        if await self.wait([warm], 120):
            raise RuntimeError("the warm-up run did not end within 120 s")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.agent.stop()
        await self.pool.aclose()
        shutil.rmtree(self.home, ignore_errors=True)

    async def _one(self, run: RunSpec) -> None:
        from langchain_core.messages import AIMessage

        try:
            messages = await self.agent.invoke(run.goal, model=run.model)
            plans = sum(1 for m in messages if isinstance(m, AIMessage))
            answered = str(messages[-1].content).startswith("done after")
            status = "RunCompleted" if answered else "wrong_answer"
        except Exception as exc:
            status, plans = type(exc).__name__, 0
        self.outcomes[run.tag] = Outcome(time.perf_counter(), status, plans)
        self.changed.set()

    async def submit(self, runs: Sequence[RunSpec]) -> float:
        began = time.perf_counter()
        for run in runs:
            task = asyncio.create_task(self._one(run))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return began

    async def wait(self, runs: Sequence[RunSpec], timeout_s: float) -> int:
        return await _wait_for(self.outcomes, self.changed, {r.tag for r in runs}, timeout_s)


# --------------------------------------------------------------------------- measuring


class PeakRss:
    """This process's resident set size, sampled from /proc by a thread (context manager)."""

    def __init__(self, every_s: float = 0.1) -> None:
        self.every_s = every_s
        self.start_mb = 0.0
        self.peak_mb = 0.0
        self._stop = threading.Event()

    @staticmethod
    def now_mb() -> float:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pages = int(Path("/proc/self/statm").read_text().split()[1])
            return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
        return 0.0

    def __enter__(self) -> PeakRss:
        self.start_mb = self.peak_mb = self.now_mb()
        self._thread = threading.Thread(target=self._sample, daemon=True, name="rss")
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak_mb = max(self.peak_mb, self.now_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak_mb = max(self.peak_mb, self.now_mb())


def completed(system: System, run: RunSpec) -> bool:
    outcome = system.outcomes.get(run.tag)
    return outcome is not None and outcome.status == "RunCompleted" and outcome.plans == run.tool_steps + 1


def expected_events(tool_steps: int) -> dict[str, int]:
    """The events one run of the scripted calculator agent appends to the events topic."""
    steps = tool_steps + 1
    return {
        "TaskSubmitted": 1,
        "PlanProposed": steps,
        "BudgetCharged": steps + tool_steps,  # each model call and each tool call
        "ToolCallRequested": tool_steps,
        "ToolCallDispatched": tool_steps,
        "ObservationRecorded": tool_steps,
        "RunCompleted": 1,
    }


@dataclass
class Row:
    """One measurement: what was measured, on which system and backend, and the results."""

    workload: str
    system: str
    backend: str
    values: dict[str, Any]


SystemFactory = Callable[[str], Any]
"""Builds a system under test for a model server's base URL."""


def _systems(args: argparse.Namespace, default_model: str) -> Iterator[SystemFactory]:
    if "agentstream" in args.systems:
        for spec in args.logs:
            yield functools.partial(
                AgentstreamSystem, spec, args.registry, workdir=args.workdir, default_model=default_model
            )
    if "langgraph" in args.systems:
        if langgraph_peer.versions() is None:
            print(
                f"LangGraph is not installed: its rows are skipped. {langgraph_peer.INSTALL_HINT}",
                file=sys.stderr,
            )
            return
        for durability in args.langgraph_durability:
            yield functools.partial(LangGraphSystem, durability, workdir=args.workdir)


@contextlib.contextmanager
def each_system(
    args: argparse.Namespace, default_model: str, latency: Mapping[str, float]
) -> Iterator[Iterator[tuple[Any, ModelServerProcess]]]:
    """Each system to measure with a model server of its own (so the server's counts,
    peak concurrency included, are that system's alone)."""

    def systems() -> Generator[tuple[Any, ModelServerProcess]]:
        for make in _systems(args, default_model):
            with ModelServerProcess(latency, args.time_limit * 4 + 600) as server:
                yield make(server.base_url), server

    running = systems()
    try:
        yield running
    finally:
        running.close()  # stops the model server of a system left early


async def slow_neighbour(args: argparse.Namespace) -> list[Row]:
    rows = []
    latency = {"slow": args.slow_latency, "fast": 0.0}
    with each_system(args, "fast", latency) as systems:
        for system, server in systems:
            print(f"slow-neighbour: {system.label} {system.backend}", file=sys.stderr)
            await system.start()
            try:
                slow = RunSpec("slow", args.slow_tool_steps)
                quick = [RunSpec("fast", args.quick_tool_steps) for _ in range(args.quick_runs)]
                slow_at = await system.submit([slow])
                await asyncio.sleep(args.quick_delay)
                quick_at = await system.submit(quick)
                pending = await system.wait([slow, *quick], args.time_limit)
            finally:
                outcomes = dict(system.outcomes)
                await system.stop()
            done = [q for q in quick if completed(system, q)]
            times = [outcomes[q.tag].ended_at - quick_at for q in done]
            slow_end = outcomes[slow.tag].ended_at if slow.tag in outcomes else None
            before = sum(1 for q in done if slow_end is None or outcomes[q.tag].ended_at < slow_end)
            values = {
                "quick runs completed": f"{len(done)}/{len(quick)}",
                "quick p50 s": percentile(times, 50),
                "quick p95 s": percentile(times, 95),
                "quick p99 s": percentile(times, 99),
                "quick max s": max(times, default=None),
                "slow run s": None if slow_end is None else slow_end - slow_at,
                "slow run ok": completed(system, slow),
                "quick done before slow": f"{before}/{len(quick)}",
                "not ended at time limit": pending,
                "model calls in flight, peak": server.stats()["peak_in_flight"],
            }
            rows.append(Row("slow-neighbour", system.label, system.backend, values))
            print(f"  {values}", file=sys.stderr)
    return rows


async def many_runs(args: argparse.Namespace) -> list[Row]:
    rows = []
    with each_system(args, "second", {"second": args.model_latency}) as systems:
        for system, server in systems:
            print(f"many-runs: {system.label} {system.backend}, {args.runs} runs", file=sys.stderr)
            await system.start()
            runs = [RunSpec("second", args.tool_steps) for _ in range(args.runs)]
            try:
                with PeakRss() as rss:
                    began = await system.submit(runs)
                    pending = await system.wait(runs, args.time_limit)
            finally:
                outcomes = dict(system.outcomes)
                types = dict(system.tally.types) if isinstance(system, AgentstreamSystem) else {}
                dead = system.dead_lettered() if isinstance(system, AgentstreamSystem) else None
                await system.stop()
            ended = [outcomes[r.tag].ended_at for r in runs if r.tag in outcomes]
            wall = (max(ended) - began) if not pending and ended else args.time_limit
            ok = sum(1 for r in runs if completed(system, r))
            statuses = Counter(outcomes[r.tag].status for r in runs if r.tag in outcomes)
            stats = server.stats()
            calls = stats["calls"]
            model_calls = [len(calls.get(r.tag, [])) for r in runs]
            problems = []
            if ok != len(runs):
                problems.append(
                    f"{len(runs) - ok} runs not completed ({dict(statuses)}, {pending} not ended)"
                )
            wrong_calls = sum(1 for n in model_calls if n != args.tool_steps + 1)
            if wrong_calls:
                problems.append(
                    f"{wrong_calls} runs with a model call count other than {args.tool_steps + 1}"
                )
            values: dict[str, Any] = {
                "runs completed": f"{ok}/{len(runs)}",
                "wall s": wall,
                "runs/s": ok / wall if wall else None,
                "model calls/s": sum(model_calls) / wall if wall else None,
                "model calls in flight, peak": stats["peak_in_flight"],
                "RSS MB start": rss.start_mb,
                "RSS MB peak": rss.peak_mb,
            }
            if isinstance(system, AgentstreamSystem):
                total: Counter[str] = Counter()
                for r in runs:
                    total.update(types.get(r.tag, Counter()))
                expected = {k: v * len(runs) for k, v in expected_events(args.tool_steps).items()}
                for kind in sorted(set(total) | set(expected)):
                    if total.get(kind, 0) != expected.get(kind, 0):
                        problems.append(
                            f"{kind}: {total.get(kind, 0)} events, expected {expected.get(kind, 0)}"
                        )
                values["events/s"] = sum(total.values()) / wall if wall else None
                if dead:
                    problems.append(f"{dead} records dead-lettered")
            values["lost or duplicated"] = "; ".join(problems) or "none"
            rows.append(Row("many-runs", system.label, system.backend, values))
            print(f"  {values}", file=sys.stderr)
    return rows


async def step_overhead(args: argparse.Namespace) -> list[Row]:
    rows = []
    serve: int | None = None
    if args.processes > 1:
        if not serve_supports_processes():
            note = "skipped: `agentstream serve` has no --processes here"
            print(f"step-overhead --processes {args.processes}: {note}", file=sys.stderr)
            return [Row("step-overhead", "agentstream", f"--processes {args.processes}", {"note": note})]
        serve = args.processes
    elif args.serve:
        serve = 1
    with ModelServerProcess({"instant": 0.0}, args.time_limit * 4 + 600) as server:
        for spec in args.logs:
            system = AgentstreamSystem(
                spec,
                args.registry,
                server.base_url,
                args.workdir,
                default_model="instant",
                serve_processes=serve,
            )
            where = "in-process" if serve is None else f"serve --processes {serve}"
            print(f"step-overhead: {system.backend}, {where}", file=sys.stderr)
            await system.start()
            try:
                serial = RunSpec("instant", args.steps)
                await system.submit([serial])
                serial_pending = await system.wait([serial], args.time_limit)
                wave = [RunSpec("instant", args.tool_steps) for _ in range(args.runs)]
                began = await system.submit(wave)
                pending = await system.wait(wave, args.time_limit)
            finally:
                outcomes = dict(system.outcomes)
                await system.stop()
            calls = server.stats()["calls"]
            gaps = [(b - a) * 1000 for a, b in itertools.pairwise(calls.get(serial.tag, []))]
            ended = [outcomes[r.tag].ended_at for r in wave if r.tag in outcomes]
            wall = (max(ended) - began) if not pending and ended else args.time_limit
            steps = sum(len(calls.get(r.tag, [])) for r in wave)
            values = {
                "serial run ok": completed(system, serial) and not serial_pending,
                "step p50 ms": percentile(gaps, 50),
                "step p95 ms": percentile(gaps, 95),
                "runs in flight": args.runs,
                "runs completed": f"{sum(1 for r in wave if completed(system, r))}/{len(wave)}",
                "steps/s": steps / wall if wall else None,
            }
            rows.append(Row("step-overhead", "agentstream", f"{system.backend}, {where}", values))
            print(f"  {values}", file=sys.stderr)
    return rows


# --------------------------------------------------------------------------- report


def machine_line(load_at_start: Sequence[float] | None = None) -> str:
    m = machine()
    start = f"{[round(x, 2) for x in load_at_start]} at start, " if load_at_start else ""
    ram = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 2**20:.0f} GiB"
    src = source_state()
    dirty = " (+ local changes)" if src["modified_tracked_files"] else ""
    return (
        f"**Machine:** {m['nproc']} CPUs ({m['cpu_model']}), {ram} RAM, Python {platform.python_version()}, "
        f"load average {start}{m['loadavg']} at end; agentstream at {src['commit']}{dirty}."
    )


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"
    return str(value)


def markdown(rows: Sequence[Row], load_at_start: Sequence[float] | None = None) -> str:
    lines = [machine_line(load_at_start)]
    by_workload: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_workload[row.workload].append(row)
    for workload, group in by_workload.items():
        keys: list[str] = []
        for row in group:
            keys += [k for k in row.values if k not in keys]
        lines += ["", f"`{workload}`", "", "| system | backend | " + " | ".join(keys) + " |"]
        lines.append("|---|---|" + "---:|" * len(keys))
        for row in group:
            cells = [_cell(row.values.get(k)) for k in keys]
            lines.append(f"| {row.system} | {row.backend} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, time_limit: float) -> None:
        p.add_argument(
            "--log",
            action="append",
            dest="logs",
            help="agentstream log: sqlite (synchronous=full, the default), sqlite-normal, "
            "sqlite:///PATH or kafka://host:port; repeatable",
        )
        p.add_argument("--registry", help="schema registry URL (with a Kafka log): http://host:port")
        p.add_argument(
            "--time-limit",
            type=float,
            default=time_limit,
            help="seconds one measurement may wait for its runs",
        )
        p.add_argument("--workdir", type=Path, default=None, help="where temporary logs go")
        p.add_argument("--json", type=Path, help="also write every measurement to this JSON file")

    def systems(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--system",
            dest="systems",
            default="agentstream,langgraph",
            help="systems to measure, comma-separated: agentstream, langgraph",
        )
        p.add_argument(
            "--langgraph-durability",
            default="sync",
            help="LangGraph checkpoint durability modes, comma-separated: sync (every checkpoint "
            "written before the next step, as agentstream always does), async (its default)",
        )

    p = commands.add_parser("slow-neighbour", help="one slow run beside 100 quick ones")
    common(p, 300.0)
    systems(p)
    p.add_argument("--slow-latency", type=float, default=20.0, help="seconds per call of the slow model")
    p.add_argument("--slow-tool-steps", type=int, default=1, help="tool steps of the slow run")
    p.add_argument("--quick-runs", type=int, default=100)
    p.add_argument("--quick-tool-steps", type=int, default=2)
    p.add_argument(
        "--quick-delay", type=float, default=1.0, help="seconds between the slow and quick submits"
    )

    p = commands.add_parser("many-runs", help="many runs in flight, a model with latency")
    common(p, 1800.0)
    systems(p)
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--tool-steps", type=int, default=5)
    p.add_argument("--model-latency", type=float, default=1.0, help="seconds per model call")

    p = commands.add_parser("step-overhead", help="per-step cost with an instant model")
    common(p, 600.0)
    p.add_argument("--steps", type=int, default=30, help="tool steps of the one sequential run")
    p.add_argument("--runs", type=int, default=1000, help="runs in flight for the throughput figure")
    p.add_argument("--tool-steps", type=int, default=5, help="tool steps of each run in flight")
    p.add_argument("--processes", type=int, default=1, help="agentstream serve --processes N (N > 1)")
    p.add_argument("--serve", action="store_true", help="run the workers as `agentstream serve` in a child")

    p = commands.add_parser("model-server", help="serve the scripted model (the benchmarks start their own)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency", action="append", default=[], help="MODEL=SECONDS, repeatable")
    p.add_argument("--default-latency", type=float, default=0.0, help="seconds for other model names")
    p.add_argument("--lifetime", type=float, default=3600.0, help="stop after this many seconds")
    return top


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = parser().parse_args(argv)
    if args.command == "model-server":
        return args
    args.logs = args.logs or ["sqlite"]
    if args.registry is None and any(s.startswith("kafka://") for s in args.logs):
        print(
            "note: a Kafka log with a SQLite schema registry (pass --registry for a real one)",
            file=sys.stderr,
        )
    if hasattr(args, "systems"):
        args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
        unknown = set(args.systems) - {"agentstream", "langgraph"}
        if unknown:
            raise SystemExit(f"unknown --system {', '.join(sorted(unknown))}: use agentstream, langgraph")
        args.langgraph_durability = [d.strip() for d in args.langgraph_durability.split(",") if d.strip()]
    args.workdir = Path(args.workdir or tempfile.gettempdir())
    return args


WORKLOADS = {"slow-neighbour": slow_neighbour, "many-runs": many_runs, "step-overhead": step_overhead}


async def measure(args: argparse.Namespace) -> list[Row]:
    """Run the workload `args.command` names; returns its rows."""
    return await WORKLOADS[args.command](args)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.command == "model-server":
        latency = {}
        for item in args.latency:
            name, sep, seconds = item.partition("=")
            if not sep:
                raise SystemExit(f"--latency {item!r}: expected MODEL=SECONDS")
            latency[name] = float(seconds)
        serve_model(args.host, args.port, latency, args.default_latency, args.lifetime)
        return
    load_at_start = os.getloadavg()
    rows = asyncio.run(measure(args))
    if args.json:
        report = {
            "bench": "concurrency",
            "command": args.command,
            "machine": machine(),
            "source": source_state(),
            "langgraph": langgraph_peer.versions(),
            "rows": [row.__dict__ for row in rows],
        }
        args.json.write_text(json.dumps(report, indent=1, default=str))
    print(markdown(rows, load_at_start))


if __name__ == "__main__":
    main()
