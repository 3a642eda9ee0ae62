"""People in the loop, end to end: approvals of high-risk calls (a real SMTP server receives
the mail), ask_human, cancel and goal changes, with the workers over a real log."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentstream.config import Settings
from agentstream.interventions import InterventionError, Interventions
from agentstream.runtime import AgentRuntime, Task
from handlers.policy import TenantPolicies, ToolPolicy
from handlers.router import arguments_digest
from handlers.tools.base import canonical_json
from handlers.tools.mail import SmtpSettings, message_id
from projections.run_view import RunView
from streams.events import (
    ApprovalDecided,
    ApprovalDecisionIgnored,
    ApprovalRequested,
    Event,
    ObservationRecorded,
    ToolCallDispatched,
    ToolCallRejected,
)
from streams.log import OutgoingRecord
from tests.e2e.test_agent_loop import fast_models, tool_messages
from tests.llm_servers import ProviderServer, openai_reply
from tests.support.backends import Backend
from tests.support.smtp import Mailbox

pytestmark = pytest.mark.slow

EMAIL = {"to": "ops@example.org", "subject": "Deploy done", "body": "The deploy finished."}
MAIL_POLICY = {"allowed_tiers": ["low", "medium", "high"]}


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ProviderServer]:
    with ProviderServer() as running:
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        monkeypatch.setenv("OPENAI_BASE_URL", running.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.delenv("AGENTSTREAM_PRICES", raising=False)
        yield running


class Session:
    """A runtime with one run in it, the run's events as they arrive, and the interventions."""

    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime
        self.events: list[Event] = []
        self.people: Interventions = runtime.interventions("test")
        self.run_id = ""
        self._follow: asyncio.Task[None] | None = None

    async def submit(self, task: Task) -> str:
        self.run_id = await self.runtime.submit(task)

        async def collect() -> None:
            async for event in self.runtime.follow(self.run_id):
                self.events.append(event)

        self._follow = asyncio.create_task(collect())
        return self.run_id

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    async def wait(self, predicate: Callable[[list[Event]], bool]) -> None:
        async with asyncio.timeout(60):
            while not predicate(self.events):
                self.runtime.check_health()
                await asyncio.sleep(0.02)

    async def wait_type(self, name: str, count: int = 1) -> list[Event]:
        await self.wait(lambda events: sum(e.type_name == name for e in events) >= count)
        return [e for e in self.events if e.type_name == name]

    async def finish(self) -> RunView:
        assert self._follow is not None
        await asyncio.wait_for(self._follow, 60)
        await asyncio.sleep(0.3)  # anything emitted after the end would show up now
        return await self.runtime.view(self.run_id)

    async def append(self, event: Event) -> None:
        """Append an event as any producer could (a buggy gateway, a replay)."""
        topic = self.runtime.settings.topics.events
        value = await self.runtime.codec.encode(topic, event)
        await self.runtime.log.append([OutgoingRecord(topic, event.meta.run_id.encode(), value)])


@pytest.fixture
async def session_factory(
    backend: Backend, tmp_path: Path, mailbox: Mailbox
) -> AsyncIterator[Callable[..., Any]]:
    runtimes: list[AgentRuntime] = []

    async def make(policy: ToolPolicy | TenantPolicies | None = None, **kwargs: Any) -> Session:
        settings = Settings(
            home=tmp_path / "home",
            log_url=backend.url,
            registry_url=f"sqlite://{backend.registry_path}",
            topics=backend.topics,
        )
        runtime = AgentRuntime(
            settings,
            policy=policy,
            models=fast_models,
            memory=False,
            smtp=SmtpSettings("127.0.0.1", mailbox.port, sender="agent@example.org"),
            **kwargs,
        )
        await runtime.start()
        runtimes.append(runtime)
        return Session(runtime)

    yield make
    for runtime in runtimes:
        await runtime.stop()


def task(goal: str = "tell ops the deploy is done", **kwargs: Any) -> Task:
    return Task(goal=goal, model="openai:gpt-4o-mini", **kwargs)


async def test_an_approved_email_is_sent_once_and_the_run_completes(
    session_factory: Callable[..., Any], server: ProviderServer, mailbox: Mailbox
) -> None:
    server.script(openai_reply("Emailing ops.", [("m", "send_email", EMAIL)]), openai_reply("Ops know."))
    session: Session = await session_factory(ToolPolicy.build(MAIL_POLICY))
    run_id = await session.submit(task())

    [request] = await session.wait_type("ApprovalRequested")
    assert isinstance(request, ApprovalRequested)
    assert request.arguments_json == canonical_json(EMAIL)
    assert request.arguments_digest == arguments_digest(canonical_json(EMAIL))
    assert request.risk_tier == "high" and request.expires_at is not None
    await session.wait_type("RunSuspended")
    assert (await session.runtime.view(run_id)).status == "suspended"

    # The inbox lists it once the projector has caught up.
    pending = await session.people.approvals("default")
    async with asyncio.timeout(30):
        while not pending:
            await asyncio.sleep(0.05)
            pending = await session.people.approvals("default")
    assert [(a.approval_id, a.tool, a.run_id) for a in pending] == [
        (request.approval_id, "send_email", run_id)
    ]
    assert mailbox.messages == [] and not session.of(ToolCallDispatched)

    decided = await session.people.decide("default", request.approval_id, "approved", "alice", "go ahead")
    view = await session.finish()

    assert view.status == "completed" and view.answer == "Ops know."
    [message] = mailbox.messages
    [dispatched] = session.of(ToolCallDispatched)
    assert message["To"] == "ops@example.org" and message["Subject"] == "Deploy done"
    assert message.get_content().strip() == "The deploy finished."
    assert message["Message-ID"] == message_id(dispatched.idempotency_key)
    assert [e.type_name for e in session.events].index("RunResumed") > [
        e.type_name for e in session.events
    ].index("ApprovalDecided")
    assert json.loads(tool_messages(server.requests[1].json)["call_1_0"])["sent"] is True
    with pytest.raises(InterventionError, match="already"):
        await session.people.decide("default", request.approval_id, "approved", "bob")
    assert decided.reviewer == "alice"


async def test_a_high_risk_call_never_runs_without_a_matching_approval(
    session_factory: Callable[..., Any], server: ProviderServer, mailbox: Mailbox
) -> None:
    server.script(
        openai_reply(None, [("a", "send_email", EMAIL)]),
        openai_reply(None, [("b", "send_email", EMAIL)]),
        openai_reply("One email sent, the second was denied."),
    )
    session: Session = await session_factory(ToolPolicy.build(MAIL_POLICY))
    run_id = await session.submit(task())
    [first] = await session.wait_type("ApprovalRequested")
    assert isinstance(first, ApprovalRequested)

    # No approval: nothing is sent while the request waits.
    await asyncio.sleep(1.0)
    assert mailbox.messages == [] and not session.of(ToolCallDispatched)

    # An approval for other arguments is ignored.
    other = canonical_json({**EMAIL, "to": "everyone@example.org"})
    forged = ApprovalDecided(
        meta=session.people._meta(await session.runtime.view(run_id)),
        approval_id=first.approval_id,
        tool_call_id=first.tool_call_id,
        arguments_digest=arguments_digest(other),
        decision="approved",
        reviewer="mallory",
    )
    await session.append(forged)
    [ignored] = await session.wait_type("ApprovalDecisionIgnored")
    assert isinstance(ignored, ApprovalDecisionIgnored)
    assert (ignored.reason, ignored.decision_event_id) == ("digest_mismatch", forged.meta.event_id)
    assert mailbox.messages == [] and not session.of(ToolCallDispatched)
    with pytest.raises(InterventionError, match="other arguments"):
        await session.people.decide(
            "default",
            first.approval_id,
            "approved",
            "bob",
            run_id=run_id,
            arguments_digest=forged.arguments_digest,
        )

    # The real approval sends exactly the approved email.
    approval = await session.people.decide("default", first.approval_id, "approved", "alice", run_id=run_id)
    await asyncio.wait_for(mailbox.wait_for(1), 60)
    requests = await session.wait_type("ApprovalRequested", 2)
    second = requests[1]
    assert isinstance(second, ApprovalRequested)
    assert second.arguments_digest == first.arguments_digest, "the same arguments, a new call"

    # Replaying the old approval (as it was, or under a new event id) authorizes nothing new.
    await session.append(approval)
    replayed = approval.model_copy(
        update={"meta": approval.meta.model_copy(update={"event_id": "replayed-1"})}
    )
    await session.append(replayed)
    ignored_all = await session.wait_type("ApprovalDecisionIgnored", 2)
    assert [(e.reason, e.decision_event_id) for e in ignored_all[1:]] == [("already_approved", "replayed-1")]  # type: ignore[attr-defined]

    # A denial rejects the call; the model sees why and finishes.
    await session.people.decide("default", second.approval_id, "denied", "alice", "not twice", run_id=run_id)
    view = await session.finish()
    assert view.status == "completed"
    [rejected] = session.of(ToolCallRejected)
    assert rejected.reason == "approval_denied" and "not twice" in rejected.errors[0]
    assert "approval_denied" in tool_messages(server.requests[2].json)["call_2_0"]
    assert len(mailbox.messages) == 1
    assert len(session.of(ToolCallDispatched)) == 1


@pytest.mark.parametrize("on_expiry", ["deny", "fail"])
async def test_an_unanswered_request_expires(
    session_factory: Callable[..., Any], server: ProviderServer, mailbox: Mailbox, on_expiry: str
) -> None:
    server.script(openai_reply(None, [("m", "send_email", EMAIL)]), openai_reply("Nobody approved."))
    policy = ToolPolicy.build({**MAIL_POLICY, "approval_expiry_s": 1, "on_expiry": on_expiry})
    session: Session = await session_factory(policy, approval_scan_s=0.2)
    await session.submit(task())
    view = await session.finish()
    [decision] = session.of(ApprovalDecided)
    assert (decision.decision, decision.reviewer) == ("expired", "system")
    assert mailbox.messages == [] and not session.of(ToolCallDispatched)
    if on_expiry == "deny":
        assert view.status == "completed"
        [rejected] = session.of(ToolCallRejected)
        assert rejected.reason == "approval_expired"
        assert "approval_expired" in tool_messages(server.requests[1].json)["call_1_0"]
    else:
        assert view.status == "failed" and view.error and "expired" in view.error
        assert len(server.requests) == 1


async def test_policy_constraints_and_tiers_reject_before_any_approval(
    session_factory: Callable[..., Any], server: ProviderServer, mailbox: Mailbox
) -> None:
    server.script(
        openai_reply(None, [("m", "send_email", {**EMAIL, "to": "ceo@elsewhere.com"})]),
        openai_reply("Not allowed."),
        openai_reply(None, [("m", "send_email", EMAIL)]),
        openai_reply("High risk is off for this tenant."),
    )
    policies = TenantPolicies(
        default=ToolPolicy.build({}),
        tenants={
            "acme": ToolPolicy.build(
                {
                    **MAIL_POLICY,
                    "constraints": {"send_email": {"properties": {"to": {"pattern": "@example\\.org$"}}}},
                }
            )
        },
    )
    session: Session = await session_factory(policies)
    await session.submit(task(tenant="acme"))
    view = await session.finish()
    [rejected] = session.of(ToolCallRejected)
    assert view.status == "completed"
    assert rejected.reason == "policy" and "does not match" in rejected.errors[0]
    assert not session.of(ApprovalRequested)

    other: Session = Session(session.runtime)
    await other.submit(task(tenant="globex"))
    await other.finish()
    [rejected] = other.of(ToolCallRejected)
    assert rejected.reason == "policy" and "risk tier 'high' is not allowed" in rejected.errors[0]
    assert mailbox.messages == []


async def test_ask_human_suspends_until_a_person_answers(
    session_factory: Callable[..., Any], server: ProviderServer
) -> None:
    server.script(
        openai_reply(None, [("q", "ask_human", {"question": "Which region?"})]),
        openai_reply("Deploying to eu-west-1."),
    )
    session: Session = await session_factory()
    run_id = await session.submit(task("deploy"))
    await session.wait_type("RunSuspended")
    questions = await session.people.questions(run_id)
    assert [(q.tool_call_id, q.question) for q in questions] == [("call_1_0", "Which region?")]
    await asyncio.sleep(0.5)
    assert len(server.requests) == 1, "no planning while the run waits"

    await session.people.answer(run_id, "eu-west-1", "alice")
    view = await session.finish()
    assert view.status == "completed" and view.answer == "Deploying to eu-west-1."
    [observed] = session.of(ObservationRecorded)
    assert json.loads(observed.data_json) == {"answer": "eu-west-1", "answered_by": "alice"}
    assert "eu-west-1" in tool_messages(server.requests[1].json)["call_1_0"]
    names = [e.type_name for e in session.events]
    assert names.index("RunResumed") == names.index("ObservationRecorded") + 1
    with pytest.raises(InterventionError, match="ended"):
        await session.people.answer(run_id, "again", "bob")


async def test_cancel_ends_a_waiting_run_for_good(
    session_factory: Callable[..., Any], server: ProviderServer, mailbox: Mailbox
) -> None:
    server.script(openai_reply(None, [("m", "send_email", EMAIL)]), openai_reply("unreachable"))
    session: Session = await session_factory(ToolPolicy.build(MAIL_POLICY))
    run_id = await session.submit(task())
    [request] = await session.wait_type("ApprovalRequested")
    await session.people.cancel(run_id, "alice", "wrong recipient")
    view = await session.finish()
    assert (view.status, view.error, view.cancelled_by) == ("cancelled", "wrong recipient", "alice")

    # A late approval appended by anyone settles nothing on a cancelled run.
    assert isinstance(request, ApprovalRequested)
    late = ApprovalDecided(
        meta=session.people._meta(view),
        approval_id=request.approval_id,
        tool_call_id=request.tool_call_id,
        arguments_digest=request.arguments_digest,
        decision="approved",
        reviewer="bob",
    )
    await session.append(late)
    await asyncio.sleep(1.0)
    assert mailbox.messages == []
    events = await session.runtime.views.events(run_id)
    assert "ToolCallDispatched" not in [e.type_name for e in events]
    assert len(server.requests) == 1
    with pytest.raises(InterventionError, match="ended"):
        await session.people.cancel(run_id, "alice")
    with pytest.raises(InterventionError, match="ended"):
        await session.people.decide("default", request.approval_id, "approved", "bob", run_id=run_id)


async def test_a_goal_change_makes_the_planner_replan(
    session_factory: Callable[..., Any], server: ProviderServer
) -> None:
    server.script(
        openai_reply(None, [("q", "ask_human", {"question": "Staging or production?"})]),
        openai_reply("Rolled back production."),
    )
    session: Session = await session_factory()
    run_id = await session.submit(task("deploy the release"))
    await session.wait_type("RunSuspended")
    await session.people.change_goal(run_id, "roll back production instead", "alice")
    await asyncio.sleep(0.5)
    assert len(server.requests) == 1, "a suspended run does not plan, even on a new goal"
    await session.people.answer(run_id, "production", "alice")
    view = await session.finish()
    assert view.goal == "roll back production instead"
    assert view.goal_history == ["deploy the release", "roll back production instead"]
    prompt = json.dumps(server.requests[1].json["messages"])
    assert "The goal has changed. New goal: roll back production instead" in prompt
    with pytest.raises(InterventionError, match="empty"):
        await session.people.change_goal(run_id, "  ", "alice")
