"""`agentstream gateway` (the HTTP API and web console) and `agentstream issue-token`."""

from __future__ import annotations

import sys

import click

from agentstream.config import Settings

ROLES = ("submitter", "reviewer", "auditor")


@click.command("gateway")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option(
    "--tokens",
    "tokens_file",
    envvar="AGENTSTREAM_GATEWAY_TOKENS",
    type=click.Path(dir_okay=False),
    help="JSON file of token digests (agentstream issue-token). Without it every request is refused.",
)
@click.option(
    "--workers/--no-workers",
    default=False,
    show_default=True,
    help="Also host the agent-loop workers, the intake and the projector in this process.",
)
@click.option("--model", "default_model", default="local:default", show_default=True, help="With --workers.")
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(exists=True, dir_okay=False),
    help="Policy JSON file (with --workers).",
)
@click.option("--allow-host", multiple=True, help="Host http_fetch may reach (with --workers; repeatable).")
@click.pass_obj
def gateway(
    settings: Settings,
    host: str,
    port: int,
    tokens_file: str | None,
    workers: bool,
    default_model: str,
    policy_file: str | None,
    allow_host: tuple[str, ...],
) -> None:
    """Serve the HTTP API (/v1, /openapi.json) and the web console (/console/)."""
    try:
        import uvicorn

        from agentstream.gateway import GatewayBackends, TokenBook, create_app
    except ImportError as exc:
        raise click.ClickException(
            f"the gateway needs its extra: pip install 'agentstream[gateway]' ({exc})"
        ) from exc
    from streams.errors import ConfigError

    try:
        tokens = TokenBook.load(tokens_file) if tokens_file else TokenBook({})
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--tokens") from exc
    if not tokens_file:
        click.echo("no --tokens file: every API request will be refused", err=True)
    factory = None
    if workers:
        from agentstream.cli import _policy
        from agentstream.runtime import AgentRuntime
        from handlers.planner import PlannerSettings

        policy = _policy(policy_file, allow_host)

        def factory() -> AgentRuntime:
            return AgentRuntime(settings, policy=policy, planner=PlannerSettings(default_model=default_model))

    app = create_app(GatewayBackends(settings, runtime_factory=factory), tokens)
    click.echo(f"gateway on http://{host}:{port} ({len(tokens)} tokens, log {settings.log_url})", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)


@click.command("issue-token")
@click.option("--tokens", "tokens_file", envvar="AGENTSTREAM_GATEWAY_TOKENS", required=True)
@click.option("--tenant", required=True)
@click.option("--role", required=True, type=click.Choice(ROLES))
@click.option("--name", required=True, help="Who holds the token (recorded as submitter/reviewer).")
def issue_token(tokens_file: str, tenant: str, role: str, name: str) -> None:
    """Create an API token; its digest goes to the tokens file, the token to stdout once."""
    from agentstream.gateway.tokens import Role, issue
    from streams.errors import ConfigError

    try:
        click.echo(issue(tokens_file, tenant, Role(role), name))
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
