"""A real gateway for tests: uvicorn on an ephemeral loopback port, served from a thread,
hosting the agent-loop workers, the intake and the projector over the given backends."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from agentstream.config import Settings
from agentstream.gateway import GatewayBackends, TokenBook, create_app
from agentstream.gateway.tokens import Role, issue
from agentstream.runtime import AgentRuntime
from handlers.planner import PlannerSettings
from handlers.policy import ToolPolicy
from handlers.tools.base import Tool, ToolContext, ToolRegistry, ToolResult, ToolSpec, builtin_registry
from streams.topics import Topics
from tests.support.goal_model import GoalModel

MODEL = "openai:gpt-4o-mini"
PEOPLE = {
    "acme-submitter": ("acme", Role.SUBMITTER),
    "acme-reviewer": ("acme", Role.REVIEWER),
    "acme-auditor": ("acme", Role.AUDITOR),
    "globex-submitter": ("globex", Role.SUBMITTER),
    "globex-reviewer": ("globex", Role.REVIEWER),
    "globex-auditor": ("globex", Role.AUDITOR),
}


class Deploy(Tool):
    """A tool the test policy wants a person to approve before every call."""

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(
            name="deploy",
            description="Deploys a service.",
            parameters={
                "type": "object",
                "properties": {"service": {"type": "string"}},
                "required": ["service"],
                "additionalProperties": False,
            },
            idempotent=True,
        )

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolResult:
        return ToolResult.success({"deployed": args["service"]})


def tools() -> ToolRegistry:
    registry = builtin_registry()
    registry.register(Deploy())
    return registry


APPROVE_DEPLOYS = ToolPolicy.build({"require_approval": ["deploy"]})


@dataclass
class RunningGateway:
    """A gateway being served, its tokens by person, and what it runs on."""

    url: str
    tokens: dict[str, str]
    backends: GatewayBackends

    def client(self, person: str | None = None, timeout: float = 30.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[person]}"} if person else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout, trust_env=False)

    def wait_for_run(
        self,
        person: str,
        run_id: str,
        *,
        status: str | None = None,
        until: Callable[[dict[str, Any]], bool] = lambda run: True,
        timeout: float = 60,
    ) -> dict[str, Any]:
        """The run once it exists (with `status`, and `until` true, if given), polled through the API."""
        deadline = time.monotonic() + timeout
        with self.client(person) as client:
            while True:
                response = client.get(f"/v1/runs/{run_id}")
                if response.status_code == 200:
                    run: dict[str, Any] = response.json()
                    if status in (None, run["status"]) and until(run):
                        return run
                if time.monotonic() > deadline:
                    raise AssertionError(f"run {run_id} not {status or 'there'}: {response.text}")
                time.sleep(0.1)


@pytest.fixture
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningGateway]:
    """A gateway over a fresh embedded deployment, its model a `GoalModel`."""
    with GoalModel() as model:
        monkeypatch.setenv("OPENAI_BASE_URL", model.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        monkeypatch.delenv("AGENTSTREAM_PRICES", raising=False)
        home = tmp_path / "home"
        settings = Settings(
            home=home,
            log_url=f"sqlite://{home}/log.db",
            registry_url=f"sqlite://{home}/registry.db",
            topics=Topics(prefix=f"g{uuid.uuid4().hex[:8]}", partitions=2),
            store_url=f"sqlite://{home}/views.db",
        )
        with serve_gateway(settings, tmp_path / "tokens.json") as running:
            yield running


def issue_tokens(path: Path) -> dict[str, str]:
    return {person: issue(path, tenant, role, person) for person, (tenant, role) in PEOPLE.items()}


@contextmanager
def serve_gateway(
    settings: Settings, tokens_file: Path, *, workers: bool = True, **runtime_options: Any
) -> Iterator[RunningGateway]:
    """Serve a gateway until the block ends. The model is `MODEL` (point OPENAI_BASE_URL at a stand-in)."""
    tokens = issue_tokens(tokens_file)

    def runtime() -> AgentRuntime:
        options: dict[str, Any] = {"registry": tools(), "policy": APPROVE_DEPLOYS, **runtime_options}
        return AgentRuntime(settings, planner=PlannerSettings(default_model=MODEL), memory=False, **options)

    backends = GatewayBackends(settings, runtime_factory=runtime if workers else None, poll_s=0.05)
    app = create_app(backends, TokenBook.load(tokens_file))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2, lifespan="on")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start")
        time.sleep(0.05)
    try:
        yield RunningGateway(f"http://127.0.0.1:{port}", tokens, backends)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
