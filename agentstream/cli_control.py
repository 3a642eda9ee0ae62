"""`agentstream tools ...` and `agentstream limits ...`: operators' kill switches and rate limits."""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click

from agentstream.cli_support import async_command
from agentstream.config import Settings
from agentstream.control import ControlError, OperatorControls
from streams.backends import open_log
from streams.codec import EventCodec
from streams.registry import open_registry

T = TypeVar("T")


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        return "cli"


async def _with(settings: Settings, action: Callable[[OperatorControls], Awaitable[T]]) -> T:
    log = open_log(settings.log_url)
    registry = open_registry(settings.registry_url)
    try:
        for spec in settings.topics.specs():
            await log.create_topic(spec)
        return await action(OperatorControls(log, EventCodec(registry), settings.topics))
    except ControlError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    finally:
        await log.close()
        await registry.aclose()


@click.group("tools")
def tools_cli() -> None:
    """Kill switches: turn a tool off (or on) for every tenant, in every process, within a second."""


@tools_cli.command("disable")
@click.argument("name")
@click.option("--reason", help="Why; the model is told.")
@click.option("--by", help="Who (default: the current user).")
@click.pass_obj
@async_command
async def tools_disable(settings: Settings, name: str, reason: str | None, by: str | None) -> None:
    """Turn a tool off: calls of it are rejected (tool_disabled) and none runs."""
    await _with(settings, lambda c: c.switch_tool(name, enabled=False, by=by or _operator(), reason=reason))
    click.echo(f"disabled {name}")


@tools_cli.command("enable")
@click.argument("name")
@click.option("--by", help="Who (default: the current user).")
@click.pass_obj
@async_command
async def tools_enable(settings: Settings, name: str, by: str | None) -> None:
    """Turn a disabled tool back on."""
    await _with(settings, lambda c: c.switch_tool(name, enabled=True, by=by or _operator()))
    click.echo(f"enabled {name}")


@tools_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per switched tool.")
@click.pass_obj
@async_command
async def tools_list(settings: Settings, as_json: bool) -> None:
    """Show every tool that was ever switched, with its latest setting."""
    switches = (await _with(settings, lambda c: c.state())).switches()
    if as_json:
        for s in switches:
            row = {"tool": s.tool, "enabled": s.enabled, "reason": s.reason, "by": s.by}
            click.echo(json.dumps({**row, "at": s.at.isoformat()}))
        return
    if not switches:
        click.echo("no tool has been switched: every tool is enabled", err=True)
        return
    click.echo(f"{'TOOL':<20}  {'STATE':<8}  {'BY':<12}  {'AT':<19}  REASON")
    for s in switches:
        state = "enabled" if s.enabled else "disabled"
        at = s.at.strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"{s.tool:<20}  {state:<8}  {s.by:<12}  {at:<19}  {s.reason or ''}")


@click.group("limits")
def limits_cli() -> None:
    """Model rate limits per provider or model spec, enforced by each serving process."""


@limits_cli.command("set")
@click.argument("provider")
@click.option("--rpm", type=int, help="Model calls per minute.")
@click.option("--tpm", type=int, help="Input plus output tokens per minute.")
@click.option("--by", help="Who (default: the current user).")
@click.pass_obj
@async_command
async def limits_set(
    settings: Settings, provider: str, rpm: int | None, tpm: int | None, by: str | None
) -> None:
    """Limit PROVIDER (openai, anthropic, local) or a model spec (openai:gpt-4o-mini).

    The new setting replaces the previous one of that name: a dimension left out is not
    limited."""
    if rpm is None and tpm is None:
        click.echo("error: give --rpm, --tpm or both (`limits clear` lifts a limit)", err=True)
        sys.exit(2)
    await _with(
        settings,
        lambda c: c.set_rate_limit(
            provider, requests_per_minute=rpm, tokens_per_minute=tpm, by=by or _operator()
        ),
    )
    click.echo(f"limited {provider}: {_describe(rpm, tpm)}")


@limits_cli.command("clear")
@click.argument("provider")
@click.option("--by", help="Who (default: the current user).")
@click.pass_obj
@async_command
async def limits_clear(settings: Settings, provider: str, by: str | None) -> None:
    """Lift the limit of PROVIDER or a model spec."""
    await _with(
        settings,
        lambda c: c.set_rate_limit(
            provider, requests_per_minute=None, tokens_per_minute=None, by=by or _operator()
        ),
    )
    click.echo(f"cleared the limit of {provider}")


@limits_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per limit.")
@click.pass_obj
@async_command
async def limits_list(settings: Settings, as_json: bool) -> None:
    """Show the limits in force."""
    limits = (await _with(settings, lambda c: c.state())).rate_limits()
    if as_json:
        for name, limit in limits.items():
            click.echo(
                json.dumps(
                    {
                        "provider": name,
                        "requests_per_minute": limit.requests_per_minute,
                        "tokens_per_minute": limit.tokens_per_minute,
                        "by": limit.by,
                    }
                )
            )
        return
    if not limits:
        click.echo("no rate limits are set", err=True)
        return
    click.echo(f"{'PROVIDER':<28}  {'RPM':>8}  {'TPM':>10}  BY")
    for name, limit in limits.items():
        rpm = "-" if limit.requests_per_minute is None else str(limit.requests_per_minute)
        tpm = "-" if limit.tokens_per_minute is None else str(limit.tokens_per_minute)
        click.echo(f"{name:<28}  {rpm:>8}  {tpm:>10}  {limit.by}")


def _describe(rpm: int | None, tpm: int | None) -> str:
    parts = [f"{rpm} requests/min" if rpm else "", f"{tpm} tokens/min" if tpm else ""]
    return ", ".join(p for p in parts if p)


def register(main: click.Group) -> None:
    """Add the `tools` and `limits` command groups to the CLI."""
    main.add_command(tools_cli)
    main.add_command(limits_cli)
