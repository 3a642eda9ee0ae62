"""`agentstream approvals | approve | deny | answer | cancel | goal`: people in the loop."""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

import click

from agentstream.cli_projections import ProjectorWiring
from agentstream.cli_support import async_command
from agentstream.config import Settings
from agentstream.interventions import InterventionError, Interventions
from projections.approvals import Approval

T = TypeVar("T")


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        return "cli"


async def _with(settings: Settings, action: Callable[[Interventions], Awaitable[T]], *, catch_up: bool) -> T:
    """Run one operation; the approvals view is brought up to date first when it is read."""
    wiring = ProjectorWiring(settings, batch_size=2000)
    try:
        await wiring.open()
        if catch_up:
            await wiring.projector.run_until_caught_up()
        people = Interventions(
            wiring.log, wiring.projector.codec, settings.topics, wiring.store, producer="cli"
        )
        return await action(people)
    except InterventionError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(2 if exc.code == "invalid" else 1)
    finally:
        await wiring.aclose()


def _approval_json(a: Approval) -> dict[str, Any]:
    return {
        "approval_id": a.approval_id,
        "run_id": a.run_id,
        "tenant": a.tenant_id,
        "tool_call_id": a.tool_call_id,
        "tool": a.tool,
        "arguments": json.loads(a.arguments_json) if a.arguments_json else None,
        "arguments_digest": a.arguments_digest,
        "risk_tier": a.risk_tier,
        "reason": a.reason,
        "status": a.status,
        "requested_at": a.requested_at.isoformat(),
        "expires_at": a.expires_at.isoformat() if a.expires_at else None,
        "reviewer": a.reviewer,
        "comment": a.comment,
    }


@click.command()
@click.option("--tenant", default="default", show_default=True)
@click.option(
    "--status",
    default="pending",
    show_default=True,
    type=click.Choice(["pending", "approved", "denied", "expired", "all"]),
)
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per approval.")
@click.pass_obj
@async_command
async def approvals(settings: Settings, tenant: str, status: str, limit: int, as_json: bool) -> None:
    """List approval requests (pending ones by default), the longest-waiting first."""
    found = await _with(
        settings,
        lambda people: people.approvals(tenant, None if status == "all" else status, limit=limit),
        catch_up=True,
    )
    if as_json:
        for approval in found:
            click.echo(json.dumps(_approval_json(approval)))
        return
    if not found:
        click.echo(f"no {'' if status == 'all' else status + ' '}approvals for tenant {tenant}", err=True)
        return
    click.echo(f"{'APPROVAL':<36}  {'RUN':<36}  {'STATUS':<8}  {'TOOL':<12}  ARGUMENTS")
    for a in found:
        arguments = a.arguments_json or ""
        click.echo(f"{a.approval_id:<36}  {a.run_id:<36}  {a.status:<8}  {a.tool or '?':<12}  {arguments}")


def _decide(decision: Literal["approved", "denied"]) -> Callable[..., None]:
    @click.argument("approval_id")
    @click.option("--comment", help="Why, for the audit log and the agent.")
    @click.option("--tenant", default="default", show_default=True)
    @click.option("--reviewer", help="Who decides (default: the current user).")
    @click.pass_obj
    @async_command
    async def command(
        settings: Settings, approval_id: str, comment: str | None, tenant: str, reviewer: str | None
    ) -> None:
        event = await _with(
            settings,
            lambda people: people.decide(tenant, approval_id, decision, reviewer or _who(), comment),
            catch_up=True,
        )
        click.echo(f"{decision} {approval_id} (call {event.tool_call_id}, run {event.meta.run_id})")

    return command


approve = click.command(
    "approve", help="Approve a pending request: its call runs with exactly those arguments."
)(_decide("approved"))
deny = click.command("deny", help="Deny a pending request: the agent is told and continues without it.")(
    _decide("denied")
)


@click.command()
@click.argument("run_id")
@click.argument("text")
@click.option("--call", "tool_call_id", help="The ask_human call to answer, when several are open.")
@click.option("--by", "answered_by", help="Who answers (default: the current user).")
@click.pass_obj
@async_command
async def answer(
    settings: Settings, run_id: str, text: str, tool_call_id: str | None, answered_by: str | None
) -> None:
    """Answer the question a run asked with ask_human; the run resumes."""
    event = await _with(
        settings,
        lambda people: people.answer(run_id, text, answered_by or _who(), tool_call_id=tool_call_id),
        catch_up=False,
    )
    click.echo(f"answered {event.tool_call_id} of run {run_id}")


@click.command()
@click.argument("run_id")
@click.option("--reason", help="Why the run is cancelled.")
@click.pass_obj
@async_command
async def cancel(settings: Settings, run_id: str, reason: str | None) -> None:
    """Cancel a run: it ends now and nothing it waits for runs."""
    await _with(settings, lambda people: people.cancel(run_id, _who(), reason), catch_up=False)
    click.echo(f"cancelled {run_id}")


@click.command()
@click.argument("run_id")
@click.argument("new_goal")
@click.pass_obj
@async_command
async def goal(settings: Settings, run_id: str, new_goal: str) -> None:
    """Change a run's goal; the planner replans from the new one at its next step."""
    await _with(settings, lambda people: people.change_goal(run_id, new_goal, _who()), catch_up=False)
    click.echo(f"goal of {run_id} changed")


COMMANDS = (approvals, approve, deny, answer, cancel, goal)
