"""The `agentstream` command line."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import signal
import sys
from typing import TYPE_CHECKING, Any, TypeVar

import click

from agentstream.cli_support import async_command, run_async
from agentstream.config import Settings
from streams.backends import open_log
from streams.codec import EventCodec
from streams.errors import PoisonEvent
from streams.events import (
    ApprovalDecided,
    ApprovalRequested,
    BudgetCharged,
    Event,
    ObservationRecorded,
    PlanProposed,
    RunAborted,
    RunCancelled,
    RunFailed,
    RunSuspended,
    ScratchpadSummarized,
    ToolCallRejected,
    ToolCallRequested,
)
from streams.log import EventLog
from streams.reading import event_json, read_run
from streams.registry import open_registry
from streams.worker import Handler, Worker

T = TypeVar("T")

if TYPE_CHECKING:
    from handlers.policy import TenantPolicies
    from handlers.tools.base import ToolRegistry


class Backends:
    """The log and codec for one command, opened from settings and closed after."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log: EventLog = open_log(settings.log_url)
        self.registry = open_registry(settings.registry_url)
        self.codec = EventCodec(self.registry)

    async def ensure_topics(self) -> None:
        for spec in self.settings.topics.specs():
            await self.log.create_topic(spec)

    async def aclose(self) -> None:
        await self.log.close()
        await self.registry.aclose()


@click.group()
@click.option("--home", envvar="AGENTSTREAM_HOME", help="Data directory of the embedded default.")
@click.option(
    "--log",
    "log_url",
    envvar="AGENTSTREAM_LOG_URL",
    help="Event log URL: sqlite:///PATH or kafka://HOST:PORT.",
)
@click.option(
    "--registry",
    "registry_url",
    envvar="AGENTSTREAM_REGISTRY_URL",
    help="Schema registry URL: sqlite:///PATH or http(s)://HOST.",
)
@click.version_option(package_name="agentstream")
@click.pass_context
def main(ctx: click.Context, home: str | None, log_url: str | None, registry_url: str | None) -> None:
    """agentstream: an event-sourced runtime for autonomous AI agents."""
    ctx.obj = Settings.from_env(home=home, log_url=log_url, registry_url=registry_url)


@main.command()
@click.pass_obj
@async_command
async def topics(settings: Settings) -> None:
    """List topics with their partitions and record counts."""
    backends = Backends(settings)
    try:
        await backends.ensure_topics()
        stats = await backends.log.topics()
        width = max((len(s.name) for s in stats), default=5)
        click.echo(f"{'TOPIC':<{width}}  PARTITIONS  RECORDS")
        for s in stats:
            click.echo(f"{s.name:<{width}}  {s.partitions:>10}  {s.records:>7}")
    finally:
        await backends.aclose()


def _summary(data: dict[str, Any]) -> str:
    skip = {"type", "topic", "partition", "offset", "meta"}
    parts = []
    for key, value in data.items():
        if key in skip or value in (None, [], {}):
            continue
        text = json.dumps(value) if not isinstance(value, str) else value
        parts.append(f"{key}={text if len(text) <= 60 else text[:57] + '...'}")
    return " ".join(parts)


@main.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_obj
@async_command
async def events(settings: Settings, run_id: str, as_json: bool) -> None:
    """Print the events of one run, decoded, in order."""
    backends = Backends(settings)
    try:
        await backends.ensure_topics()
        found = 0
        async for record, event in read_run(backends.log, backends.codec, settings.topics, run_id):
            found += 1
            data = event_json(record, event)
            if as_json:
                click.echo(json.dumps(data))
            else:
                when = event.meta.occurred_at.strftime("%H:%M:%S.%f")[:-3]
                click.echo(f"{record.offset:>8}  {when}  {event.type_name:<20} {_summary(data)}")
        if not found:
            click.echo(f"no events for run {run_id}", err=True)
            sys.exit(1)
    except PoisonEvent as exc:
        click.echo(f"error: the log holds an undecodable record: {exc}", err=True)
        sys.exit(2)
    finally:
        await backends.aclose()


def _load(ref: str, kind: type[T]) -> T:
    """An instance of `kind` named by `module:attribute` (a class is instantiated)."""
    module_name, _, attr = ref.partition(":")
    if not attr:
        raise click.BadParameter(f"use module:attribute, for example mypkg.things:My{kind.__name__}")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise click.BadParameter(f"cannot load {ref}: {exc}") from exc
    loaded = target() if isinstance(target, type) else target
    if not isinstance(loaded, kind):
        raise click.BadParameter(f"{ref} is not a {kind.__name__}")
    return loaded


def _load_handler(ref: str) -> Handler:
    return _load(ref, Handler)  # type: ignore[type-abstract]


def _registry(tool_refs: tuple[str, ...]) -> ToolRegistry:
    from handlers.tools.base import Tool, builtin_registry

    registry = builtin_registry()
    for ref in tool_refs:
        registry.register(_load(ref, Tool))  # type: ignore[type-abstract]
    return registry


def _check_models(*specs: str | None) -> None:
    """Fail fast, before anything is submitted, on a model spec that cannot work here."""
    from handlers.llm.base import ModelError, resolve_model

    for spec in specs:
        if spec is None:
            continue
        try:
            asyncio.run(resolve_model(spec).aclose())
        except ModelError as exc:
            raise click.BadParameter(str(exc), param_hint="--model") from exc


def _policy(policy_file: str | None, allow_host: tuple[str, ...]) -> TenantPolicies:
    """The tenants' policies from a policy file or directory (see handlers.policy)."""
    from handlers.policy import TenantPolicies, ToolPolicy

    try:
        if policy_file:
            return TenantPolicies.load(policy_file, allow_host)
        return TenantPolicies(ToolPolicy.build({}, allow_host))
    except (OSError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="--policy") from exc


@main.command()
@click.argument("handler_ref")
@click.option("--member", default="0", show_default=True, help="Stable name of this group member.")
@click.option("--batch-size", default=500, show_default=True)
@click.pass_obj
def worker(settings: Settings, handler_ref: str, member: str, batch_size: int) -> None:
    """Host one handler (module:attribute) as a worker until SIGINT or SIGTERM."""
    handler = _load_handler(handler_ref)

    async def serve() -> None:
        backends = Backends(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await backends.ensure_topics()
            runner = Worker(
                backends.log,
                backends.codec,
                handler,
                topics=settings.topics,
                member=member,
                batch_size=batch_size,
            )
            click.echo(f"worker {runner.group}/{member} on {settings.log_url}", err=True)
            await runner.run(stop)
        finally:
            await backends.aclose()

    run_async(serve())


def _register_projections() -> None:
    from agentstream.cli_gateway import gateway, issue_token
    from agentstream.cli_interventions import COMMANDS
    from agentstream.cli_projections import projections_cli

    main.add_command(projections_cli)
    for command in COMMANDS:
        main.add_command(command)
    main.add_command(gateway)
    main.add_command(issue_token)


_register_projections()
importlib.import_module("agentstream.cli_control").register(main)  # tools, limits


@main.group()
def schemas() -> None:
    """The Avro event catalogue and its evolution rule."""


@schemas.command("list")
def schemas_list() -> None:
    """List event types with their full names."""
    from streams.catalogue import catalogue

    for schema in catalogue().values():
        click.echo(f"{schema.type_name:<22} {schema.fullname}")


@schemas.command("check")
def schemas_check() -> None:
    """Fail if the catalogue breaks a released schema or has unreleased changes."""
    from streams.evolution import RULE, check

    report = check()
    for name, problems in report.incompatible.items():
        click.echo(f"INCOMPATIBLE {name} ({RULE.value}):", err=True)
        for problem in problems:
            click.echo(f"  - {problem}", err=True)
    for name in report.unreleased:
        click.echo(f"unreleased change: {name} (run `agentstream schemas release`)", err=True)
    if not report.ok:
        sys.exit(1)
    click.echo(f"all event schemas are {RULE.value} compatible with their releases")


@schemas.command("release")
def schemas_release() -> None:
    """Record the current schemas as released (refused if incompatible)."""
    from streams.evolution import release

    try:
        released = release()
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo("\n".join(released) if released else "nothing to release")


def _short(text: str | None, limit: int = 160) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RunProgress:
    """Prints a run's events as they arrive: thoughts, calls, observations, cost."""

    def __init__(self, console: Any) -> None:
        self.console = console
        self.tokens = 0
        self.cost = 0.0

    def show(self, event: Event) -> None:
        c = self.console
        match event:
            case PlanProposed():
                c.print(f"[bold cyan]step {event.step}[/] [dim]{event.model}[/]  {_short(event.thought)}")
            case ToolCallRequested():
                c.print(f"  [yellow]→ {event.tool}[/] {_short(event.arguments_json, 120)}")
            case ToolCallRejected():
                c.print(
                    f"  [red]✗ {event.tool} rejected ({event.reason})[/] {_short('; '.join(event.errors))}"
                )
            case ObservationRecorded():
                if event.ok:
                    c.print(f"  [green]← {event.tool}[/] {_short(event.data_json)}")
                else:
                    c.print(f"  [red]← {event.tool} failed[/] {_short(event.error)}")
            case BudgetCharged():
                self.tokens += event.usage.input_tokens + event.usage.output_tokens
                self.cost += event.usage.cost_usd
                if event.source == "model":
                    c.print(f"  [dim]tokens {self.tokens} · ${self.cost:.4f}[/]")
            case ScratchpadSummarized():
                c.print(f"  [dim]summarized steps 1-{event.up_to_step} ({event.method})[/]")
            case ApprovalRequested():
                c.print(
                    f"  [magenta]⏸ {event.tool} needs approval[/] ({event.reason}):"
                    f" agentstream approve {event.approval_id}  |  agentstream deny {event.approval_id}"
                )
            case ApprovalDecided():
                c.print(f"  [magenta]{event.decision} by {event.reviewer}[/] {_short(event.comment)}")
            case RunSuspended() if event.reason == "ask_human":
                c.print(f"  [magenta]⏸ waiting for an answer:[/] agentstream answer {event.meta.run_id} TEXT")
            case RunCancelled():
                c.print(f"[bold red]cancelled[/] by {event.requested_by} {_short(event.reason)}")
            case RunAborted():
                c.print(f"[bold red]aborted[/] {event.limit}: {event.reason}")
            case RunFailed():
                c.print(f"[bold red]failed[/] {event.error}")
            case _:
                pass


@main.command()
@click.argument("goal")
@click.option("--model", help="Model spec: local:default, openai:<model>, anthropic:<model>.")
@click.option("--fallback-model", help="Model spec used when the primary keeps failing.")
@click.option("--tenant", default="default", show_default=True)
@click.option("--max-steps", type=int, default=10, show_default=True)
@click.option("--max-tokens", type=int, help="Token budget of the run.")
@click.option("--max-usd", type=float, help="Money budget of the run, in US dollars.")
@click.option("--timeout", "timeout_s", type=float, help="Wall-clock limit of the run, in seconds.")
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(exists=True),
    help="Policy JSON file, or a directory of <tenant>.json policies.",
)
@click.option("--allow-host", multiple=True, help="Host http_fetch may reach (repeatable).")
@click.option("--tool", "tool_refs", multiple=True, help="Extra tool, module:attribute (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the outcome.")
@click.pass_obj
def run(
    settings: Settings,
    goal: str,
    model: str | None,
    fallback_model: str | None,
    tenant: str,
    max_steps: int,
    max_tokens: int | None,
    max_usd: float | None,
    timeout_s: float | None,
    policy_file: str | None,
    allow_host: tuple[str, ...],
    tool_refs: tuple[str, ...],
    as_json: bool,
) -> None:
    """Run an agent on GOAL until it answers or a limit stops it; exit 0 only on success."""
    from datetime import UTC, datetime, timedelta

    from rich.console import Console

    from agentstream.runtime import AgentRuntime, Task

    policy = _policy(policy_file, allow_host)
    registry = _registry(tool_refs)
    _check_models(model, fallback_model)
    deadline = datetime.now(UTC) + timedelta(seconds=timeout_s) if timeout_s else None
    task = Task(
        goal=goal,
        tenant=tenant,
        model=model,
        fallback_model=fallback_model,
        max_steps=max_steps,
        max_tokens=max_tokens,
        max_usd=max_usd,
        deadline=deadline,
    )
    console = Console(stderr=True, highlight=False)
    progress = RunProgress(console)

    async def go() -> dict[str, Any]:
        runtime = AgentRuntime(settings, policy=policy, registry=registry)
        await runtime.start()
        try:
            run_id = await runtime.submit(task)
            if not as_json:
                console.print(f"[dim]run {run_id} · {settings.log_url}[/]")
            async for event in runtime.follow(run_id):
                if not as_json:
                    progress.show(event)
            view = await runtime.view(run_id)
        finally:
            await runtime.stop()
        return {
            "run_id": view.run_id,
            "status": view.status,
            "answer": view.answer,
            "error": view.error,
            "steps": view.step,
            "tokens": view.total_tokens,
            "cost_usd": round(view.cost_usd, 6),
        }

    outcome = run_async(go())
    if as_json:
        click.echo(json.dumps(outcome))
    elif outcome["status"] == "completed":
        click.echo(outcome["answer"])
    sys.exit(0 if outcome["status"] == "completed" else 1)


@main.command()
@click.option(
    "--member",
    default="0",
    show_default=True,
    help="Stable name of this process in its groups; with --members or --processes, its index.",
)
@click.option(
    "--members",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="How many `serve` commands share the groups (pods, say); --member is then 0 to members-1.",
)
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes to run (and supervise) here, each a member of every group.",
)
@click.option(
    "--model", "default_model", default="local:default", show_default=True, help="Default model spec."
)
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(exists=True),
    help="Policy JSON file, or a directory of <tenant>.json policies.",
)
@click.option("--allow-host", multiple=True, help="Host http_fetch may reach (repeatable).")
@click.option("--tool", "tool_refs", multiple=True, help="Extra tool, module:attribute (repeatable).")
@click.option(
    "--projector/--no-projector",
    default=True,
    show_default=True,
    help="Keep the views current here (member 0 only); off when `projections run` does it.",
)
@click.option("--parent-pid", type=int, hidden=True, help="Stop when this supervisor is gone.")
@click.pass_obj
def serve(
    settings: Settings,
    member: str,
    members: int,
    processes: int,
    default_model: str,
    policy_file: str | None,
    allow_host: tuple[str, ...],
    tool_refs: tuple[str, ...],
    projector: bool,
    parent_pid: int | None,
) -> None:
    """Run the agent-loop workers (planner, router, tools, evaluator) until SIGTERM.

    With --processes N, N child processes each run them as one member of every consumer
    group (member i of this command's --member m is m*N+i of members*N); this process
    forwards SIGTERM and SIGINT to them and restarts one that dies."""
    import os

    from agentstream.membership import check_membership
    from agentstream.runtime import AgentRuntime
    from agentstream.supervise import Child, Supervisor
    from handlers.planner import PlannerSettings
    from streams.errors import ConfigError

    try:
        check_membership(member, members)
        if processes > 1 and not member.isdigit():
            raise ConfigError("with --processes, --member is this command's index (0 unless --members)")
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--member") from exc
    policy = _policy(policy_file, allow_host)
    registry = _registry(tool_refs)

    if processes > 1:
        argv = [sys.executable, "-m", "agentstream", "serve", "--model", default_model]
        argv += ["--policy", policy_file] if policy_file else []
        argv += [arg for host in allow_host for arg in ("--allow-host", host)]
        argv += [arg for ref in tool_refs for arg in ("--tool", ref)]
        argv += [] if projector else ["--no-projector"]
        argv += ["--parent-pid", str(os.getpid()), "--members", str(members * processes)]
        env = {
            **os.environ,
            "AGENTSTREAM_HOME": str(settings.home),
            "AGENTSTREAM_LOG_URL": settings.log_url,
            "AGENTSTREAM_REGISTRY_URL": settings.registry_url,
        }
        first = int(member) * processes
        children = [Child(first + i, [*argv, "--member", str(first + i)], env) for i in range(processes)]
        click.echo(f"supervising {processes} processes on {settings.log_url}", err=True)
        sys.exit(Supervisor(children, echo=lambda line: click.echo(line, err=True)).run())

    async def go() -> None:
        runtime = AgentRuntime(
            settings,
            policy=policy,
            registry=registry,
            planner=PlannerSettings(default_model=default_model),
            member=member,
            members=members,
            projector=projector,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await runtime.start()
        role = f"member {member} of {members}, " if members > 1 else ""
        click.echo(
            f"serving {len(runtime.workers)} workers ({role}pid {os.getpid()}) on {settings.log_url}",
            err=True,
        )
        try:
            while not stop.is_set():
                runtime.check_health()
                if parent_pid is not None and os.getppid() != parent_pid:
                    click.echo("the supervising process is gone; stopping", err=True)
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
        finally:
            await runtime.stop()

    run_async(go())


@main.command()
@click.argument("goal")
@click.option("--tenant", default="default", show_default=True)
@click.option("--model", help="Model spec for this run.")
@click.option("--max-steps", type=int, default=10, show_default=True)
@click.pass_obj
@async_command
async def submit(settings: Settings, goal: str, tenant: str, model: str | None, max_steps: int) -> None:
    """Publish a task without waiting; prints the run id (workers run it: `agentstream serve`)."""
    from agentstream.interventions import Interventions
    from agentstream.runtime import Task

    backends = Backends(settings)
    try:
        await backends.ensure_topics()
        task = Task(goal=goal, tenant=tenant, model=model, max_steps=max_steps)
        people = Interventions(backends.log, backends.codec, settings.topics)
        click.echo((await people.submit(task.event())).meta.run_id)  # the intake admits it
    finally:
        await backends.aclose()


@main.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="The run and its timeline as one JSON object.")
@click.pass_obj
@async_command
async def show(settings: Settings, run_id: str, as_json: bool) -> None:
    """Show one run: its outcome and timeline (thoughts, calls, observations, cost)."""
    from rich.console import Console

    from projections.run_view import RunView, RunViews

    backends = Backends(settings)
    try:
        await backends.ensure_topics()
        events = await RunViews(backends.log, backends.codec, settings.topics).events(run_id)
    finally:
        await backends.aclose()
    if not events:
        click.echo(f"no run {run_id}", err=True)
        sys.exit(1)
    view = RunView.fold(run_id, events)
    summary: dict[str, Any] = {
        "run_id": run_id,
        "tenant": view.tenant_id,
        "goal": view.goal,
        "status": view.status,
        "answer": view.answer,
        "error": view.error,
        "steps": view.step,
        "tokens": view.total_tokens,
        "cost_usd": round(view.cost_usd, 6),
        "tool_calls": view.tool_calls,
        "submitted_at": view.submitted_at.isoformat() if view.submitted_at else None,
        "updated_at": view.updated_at.isoformat() if view.updated_at else None,
    }
    if as_json:
        summary["events"] = [{"type": e.type_name, **e.model_dump(mode="json")} for e in events]
        click.echo(json.dumps(summary))
        return
    console = Console(highlight=False)
    console.print(f"[bold]{view.goal}[/]")
    console.print(
        f"run {run_id} · tenant {view.tenant_id} · [bold]{view.status}[/] · {view.step} steps"
        f" · {view.total_tokens} tokens · ${view.cost_usd:.4f}"
    )
    progress = RunProgress(console)
    for event in events:
        progress.show(event)
    if view.answer:
        console.print(f"[bold green]answer[/] {view.answer}")


@main.command()
@click.option("--tenant", default="default", show_default=True)
@click.option("--status", help="Only runs in this status (queued, running, completed, failed, ...).")
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run.")
@click.pass_obj
@async_command
async def runs(settings: Settings, tenant: str, status: str | None, limit: int, as_json: bool) -> None:
    """List a tenant's runs, newest first (from the run-state view, brought up to date first)."""
    from agentstream.cli_projections import ProjectorWiring
    from projections.run_state import RunStates

    wiring = ProjectorWiring(settings, batch_size=2000)
    try:
        await wiring.open()
        await wiring.projector.run_until_caught_up()
        found = await RunStates(wiring.store).list(tenant, status=status, limit=limit)
        queue = await RunStates(wiring.store).queue(tenant)
    finally:
        await wiring.aclose()
    click.echo(f"tenant {tenant}: {queue.queued} queued, {queue.in_flight} in flight", err=True)
    if as_json:
        for state in found:
            click.echo(
                json.dumps(
                    {
                        "run_id": state.run_id,
                        "status": state.status,
                        "goal": state.goal,
                        "steps": state.step,
                        "tokens": state.input_tokens + state.output_tokens,
                        "cost_usd": state.cost_usd,
                        "created_at": state.created_at.isoformat(),
                        "answer": state.answer,
                        "error": state.error,
                    }
                )
            )
        return
    if not found:
        click.echo(f"no runs for tenant {tenant}", err=True)
        return
    click.echo(f"{'RUN':<36}  {'STATUS':<9}  STEPS  {'COST':>8}  {'CREATED':<19}  GOAL")
    for state in found:
        created = state.created_at.strftime("%Y-%m-%d %H:%M:%S")
        click.echo(
            f"{state.run_id:<36}  {state.status:<9}  {state.step:>5}  ${state.cost_usd:>7.4f}"
            f"  {created:<19}  {_short(state.goal, 60)}"
        )
