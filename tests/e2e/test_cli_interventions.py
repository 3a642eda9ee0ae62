"""The people-in-the-loop commands, as a reviewer uses them next to `agentstream serve`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentstream.config import Settings
from agentstream.runtime import AgentRuntime, Task
from handlers.policy import ToolPolicy
from handlers.tools.mail import SmtpSettings
from projections.run_view import RunView
from tests.e2e.test_agent_loop import fast_models
from tests.e2e.test_cli import invoke
from tests.llm_servers import ProviderServer, openai_reply
from tests.support.smtp import Mailbox

pytestmark = pytest.mark.slow

EMAIL = {"to": "ops@example.org", "subject": "hi", "body": "hello"}


@pytest.fixture
async def runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mailbox: Mailbox
) -> AsyncIterator[tuple[AgentRuntime, ProviderServer]]:
    monkeypatch.setenv("AGENTSTREAM_HOME", str(tmp_path / "home"))
    for name in (
        "AGENTSTREAM_LOG_URL",
        "AGENTSTREAM_REGISTRY_URL",
        "AGENTSTREAM_TOPIC_PREFIX",
        "AGENTSTREAM_STORE_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    with ProviderServer() as server:
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        agents = AgentRuntime(
            Settings.from_env(),
            policy=ToolPolicy.build({"allowed_tiers": ["low", "medium", "high"]}),
            models=fast_models,
            memory=False,
            smtp=SmtpSettings("127.0.0.1", mailbox.port),
        )
        await agents.start()
        yield agents, server
        await agents.stop()


async def cli(*args: str) -> tuple[int, str, str]:
    """The CLI runs its own event loop: call it from a thread."""
    return await asyncio.to_thread(invoke, *args)


async def until(runtime: AgentRuntime, run_id: str, check: object) -> RunView:
    async with asyncio.timeout(60):
        while True:
            view = await runtime.view(run_id)
            if check(view):  # type: ignore[operator]
                return view
            runtime.check_health()
            await asyncio.sleep(0.05)


async def test_review_approvals_answer_questions_and_cancel_from_the_cli(
    runtime: tuple[AgentRuntime, ProviderServer], mailbox: Mailbox
) -> None:
    agents, server = runtime
    server.script(
        openai_reply(None, [("m", "send_email", EMAIL)]),
        openai_reply(None, [("q", "ask_human", {"question": "Retry the email?"})]),
        openai_reply("Gave up on the email."),
    )
    run_id = await agents.submit(Task(goal="email ops", model="openai:gpt-4o-mini"))
    view = await until(agents, run_id, lambda v: v.pending_approvals)
    [approval_id] = view.pending_approvals

    code, out, _ = await cli("approvals", "--json")
    assert code == 0
    [listed] = [json.loads(line) for line in out.splitlines()]
    assert (listed["approval_id"], listed["run_id"], listed["tool"], listed["status"]) == (
        approval_id,
        run_id,
        "send_email",
        "pending",
    )
    assert listed["arguments"] == EMAIL and listed["risk_tier"] == "high"
    code, out, _ = await cli("approvals")
    assert code == 0 and approval_id in out and "send_email" in out
    code, _, err = await cli("approvals", "--tenant", "globex")
    assert code == 0 and "no pending approvals for tenant globex" in err

    code, _, err = await cli("approve", "no-such-approval")
    assert code == 1 and "no approval no-such-approval" in err
    code, out, err = await cli("deny", approval_id, "--comment", "not now", "--reviewer", "alice")
    assert code == 0, err
    assert f"denied {approval_id}" in out
    code, _, err = await cli("approve", approval_id)
    assert code == 1 and "already decided: denied by alice" in err

    view = await until(agents, run_id, lambda v: v.questions)
    code, _, err = await cli("answer", run_id, "no", "--call", "call_9_9")
    assert code == 1 and "no open question call_9_9" in err
    code, out, err = await cli("answer", run_id, "no", "--by", "alice")
    assert code == 0, err
    view = await until(agents, run_id, lambda v: v.terminal)
    assert view.status == "completed" and mailbox.messages == []

    code, out, _ = await cli("approvals", "--status", "all", "--json")
    assert [json.loads(line)["status"] for line in out.splitlines()] == ["denied"]
    code, _, err = await cli("cancel", run_id)
    assert code == 1 and "already ended (completed)" in err
    code, _, err = await cli("goal", "no-such-run", "x")
    assert code == 1 and "no run no-such-run" in err


async def test_change_the_goal_then_cancel_from_the_cli(runtime: tuple[AgentRuntime, ProviderServer]) -> None:
    agents, server = runtime
    server.script(openai_reply(None, [("q", "ask_human", {"question": "Which?"})]))
    run_id = await agents.submit(Task(goal="first goal", model="openai:gpt-4o-mini"))
    await until(agents, run_id, lambda v: v.questions)
    code, out, err = await cli("goal", run_id, "second goal")
    assert code == 0, err
    code, _, err = await cli("goal", run_id, "")
    assert code == 2 and "the new goal is empty" in err
    code, out, err = await cli("cancel", run_id, "--reason", "changed my mind")
    assert code == 0 and f"cancelled {run_id}" in out, err
    view = await until(agents, run_id, lambda v: v.terminal)
    assert (view.status, view.error, view.goal) == ("cancelled", "changed my mind", "second goal")
    code, _, err = await cli("answer", run_id, "too late")
    assert code == 1 and "already ended (cancelled)" in err
