"""`agentstream projections`: run the projector, rebuild views, and show how far behind they are.

Also runnable on its own, as `python -m agentstream.cli_projections`, with settings from
the environment.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agentstream.cli_support import async_command, run_async
from agentstream.config import Settings
from projections.builtin import builtin_projections
from projections.projector import Projector, ProjectorStats
from projections.stores import ProjectionStore, open_store
from streams.backends import open_log
from streams.codec import EventCodec
from streams.log import EventLog
from streams.registry import open_registry

T = TypeVar("T")


def store_url(settings: Settings) -> str:
    return settings.store_url or f"sqlite://{settings.home}/views.db"


class ProjectorWiring:
    """The log, codec, store and projector of one command, opened from settings."""

    def __init__(self, settings: Settings, batch_size: int) -> None:
        self.settings = settings
        self.log: EventLog = open_log(settings.log_url)
        self.registry = open_registry(settings.registry_url)
        self.store: ProjectionStore = open_store(store_url(settings))
        self.projector = Projector(
            self.log,
            EventCodec(self.registry),
            self.store,
            builtin_projections(),
            topic=settings.topics.events,
            batch_size=batch_size,
        )

    async def open(self) -> None:
        for spec in self.settings.topics.specs():
            await self.log.create_topic(spec)

    async def aclose(self) -> None:
        await self.store.close()
        await self.log.close()
        await self.registry.aclose()


@click.group("projections")
@click.pass_context
def projections_cli(ctx: click.Context) -> None:
    """Views folded from the events topic: run state, episodic, approvals, cost ledger."""
    if not isinstance(ctx.obj, Settings):
        ctx.obj = Settings.from_env()


@projections_cli.command()
@click.option("--batch-size", default=500, show_default=True, help="Most records applied per commit.")
@click.pass_obj
def run(settings: Settings, batch_size: int) -> None:
    """Apply new events to every view as they arrive, until SIGINT or SIGTERM."""

    async def serve() -> None:
        wiring = ProjectorWiring(settings, batch_size)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await wiring.open()
            click.echo(f"projector on {settings.log_url} -> {wiring.store.url}", err=True)
            await wiring.projector.run(stop)
        finally:
            await wiring.aclose()

    run_async(serve())


def _summary(stats: ProjectorStats, seconds: float) -> str:
    rate = stats.records / seconds if seconds > 0 else 0.0
    return (
        f"{stats.records} records read, {stats.applied} events applied, {stats.skipped} skipped,"
        f" {stats.undecodable} undecodable in {seconds:.1f}s ({rate:,.0f} records/s)"
    )


@projections_cli.command()
@click.argument("name", required=False)
@click.option("--batch-size", default=5000, show_default=True, help="Most records applied per commit.")
@click.pass_obj
@async_command
async def rebuild(settings: Settings, name: str | None, batch_size: int) -> None:
    """Drop a view (NAME, or every view) and apply the whole log to it again."""
    wiring = ProjectorWiring(settings, batch_size)
    try:
        await wiring.open()
        projector = wiring.projector
        if name is not None:
            projector.projection(name)
        await projector.start()
        total = sum((await projector.end_offsets()).values())
        console = Console(stderr=True)
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[applied]} applied"),
            TextColumn("{task.fields[rate]} records/s"),
            TimeElapsedColumn(),
        )
        started = time.perf_counter()
        label = name or "all views"
        with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
            task = progress.add_task(f"rebuild {label}", total=total, applied=0, rate="-")

            def show(stats: ProjectorStats) -> None:
                elapsed = time.perf_counter() - started
                rate = f"{stats.records / elapsed:,.0f}" if elapsed > 0 else "-"
                progress.update(task, completed=stats.records, applied=stats.applied, rate=rate)

            stats = await projector.rebuild(name, on_progress=show)
        click.echo(f"rebuilt {label}: {_summary(stats, time.perf_counter() - started)}")
    finally:
        await wiring.aclose()


@projections_cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per view, with every partition.")
@click.pass_obj
@async_command
async def status(settings: Settings, as_json: bool) -> None:
    """Each view's applied offsets against the log's end offsets, the lag, and how many
    events its fold failed on and set aside."""
    wiring = ProjectorWiring(settings, 1)
    try:
        await wiring.open()
        statuses = await wiring.projector.status()
        if as_json:
            for s in statuses:
                partitions = [
                    {"partition": p.partition, "applied": p.applied, "end": p.end} for p in s.partitions
                ]
                click.echo(
                    json.dumps(
                        {"projection": s.name, "lag": s.lag, "failed": s.failed, "partitions": partitions}
                    )
                )
            return
        width = max((len(s.name) for s in statuses), default=10)
        header = f"{'PROJECTION':<{width}}  {'APPLIED':>10}  {'END':>10}  {'LAG':>8}  {'FAILED':>6}"
        click.echo(f"{header}  LAG BY PARTITION")
        for s in statuses:
            by_partition = " ".join(f"{p.partition}:{p.lag}" for p in s.partitions)
            click.echo(
                f"{s.name:<{width}}  {s.applied:>10}  {s.end:>10}  {s.lag:>8}  {s.failed:>6}  {by_partition}"
            )
        if any(s.failed for s in statuses):
            click.echo(
                "Some events were set aside because a view's fold raised on them (see the log);"
                " fix the fold, then `agentstream projections rebuild NAME`.",
                err=True,
            )
    finally:
        await wiring.aclose()


if __name__ == "__main__":
    projections_cli()
