"""Kill -9 the agent process between an approval and the email it authorizes, and again
after the SMTP server stored the email but before the sender heard back: exactly one
email arrives."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agentstream.interventions import Interventions
from handlers.tools.mail import message_id
from projections.run_view import RunView, RunViews
from streams.backends import open_log
from streams.codec import EventCodec
from streams.log import OutgoingRecord
from streams.registry import EmbeddedSchemaRegistry
from tests.support.backends import Backend
from tests.support.scripted_provider import ConversationalProvider
from tests.support.smtp import Mailbox

ROOT = Path(__file__).resolve().parents[2]
EMAIL = {"to": "ops@example.org", "subject": "Released", "body": "Version 2 is out."}

pytestmark = pytest.mark.slow


class EmailingProvider(ConversationalProvider):
    """Asks for one send_email, then answers; the same reply for the same conversation."""

    def reply(self, body: dict[str, Any]) -> dict[str, Any]:
        reply = super().reply(body)
        message = reply["choices"][0]["message"]
        if "tool_calls" in message:
            message["tool_calls"][0]["function"] = {"name": "send_email", "arguments": json.dumps(EMAIL)}
        return reply


def _serve(
    backend: Backend, home: Path, provider: ConversationalProvider, smtp_port: int
) -> subprocess.Popen[bytes]:
    policy = home / "policy.json"
    policy.write_text(json.dumps({"allowed_tiers": ["low", "medium", "high"]}))
    env = {
        **os.environ,
        "AGENTSTREAM_HOME": str(home),
        "AGENTSTREAM_LOG_URL": backend.url,
        "AGENTSTREAM_REGISTRY_URL": f"sqlite://{backend.registry_path}",
        "AGENTSTREAM_TOPIC_PREFIX": backend.topics.prefix,
        "AGENTSTREAM_PARTITIONS": str(backend.topics.partitions),
        "AGENTSTREAM_SMTP_HOST": "127.0.0.1",
        "AGENTSTREAM_SMTP_PORT": str(smtp_port),
        "OPENAI_BASE_URL": provider.base_url,
        "OPENAI_API_KEY": "test-key",
        "NO_PROXY": "127.0.0.1",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agentstream",
            "serve",
            "--model",
            "openai:gpt-4o-mini",
            "--policy",
            str(policy),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(home / "serve.log").open("ab"),
    )


def _kill(agent: subprocess.Popen[bytes]) -> None:
    agent.send_signal(signal.SIGKILL)
    agent.wait()


async def test_one_email_per_approved_call_across_kills(
    backend: Backend, tmp_path: Path, mailbox: Mailbox
) -> None:
    from agentstream.runtime import Task

    home = tmp_path / "home"
    home.mkdir()
    log = open_log(backend.url)
    codec = EventCodec(EmbeddedSchemaRegistry(backend.registry_path))
    for spec in backend.topics.specs():
        await log.create_topic(spec)
    views = RunViews(log, codec, backend.topics)
    task = Task(goal="announce the release", max_steps=4)
    topic = backend.topics.events
    await log.append([OutgoingRecord(topic, task.run_id.encode(), await codec.encode(topic, task.event()))])

    async def until(check: Any, agent: subprocess.Popen[bytes], what: str) -> RunView:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert agent.poll() is None, (home / "serve.log").read_text()[-3000:]
            view = await views.view(task.run_id)
            if check(view):
                return view
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    with EmailingProvider(steps=1) as provider:
        agent = _serve(backend, home, provider, mailbox.port)
        view = await until(lambda v: v.status == "suspended", agent, "the approval request")
        _kill(agent)  # the run waits for a person with no process at all

        [approval_id] = list(view.pending_approvals)
        people = Interventions(log, codec, backend.topics, producer="test")
        await people.decide("default", approval_id, "approved", "alice", run_id=task.run_id)
        assert mailbox.messages == [], "an approval alone sends nothing"

        mailbox.hold_first_s = 5.0
        agent = _serve(backend, home, provider, mailbox.port)
        await asyncio.wait_for(mailbox.wait_for(1), 90)
        _kill(agent)  # the email is out; the agent never learnt it

        agent = _serve(backend, home, provider, mailbox.port)
        view = await until(lambda v: v.terminal, agent, "the end of the run")
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
    events = await views.events(task.run_id)
    await log.close()

    assert view.status == "completed", view.error
    assert len(mailbox.messages) == 1, "exactly one email per approved call"
    dispatched = [e for e in events if e.type_name == "ToolCallDispatched"]
    assert len(dispatched) == 1
    assert mailbox.messages[0]["Message-ID"] == message_id(dispatched[0].idempotency_key)  # type: ignore[attr-defined]
    assert len({e.meta.event_id for e in events}) == len(events), "no event appended twice"
