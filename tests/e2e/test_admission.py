"""Admission on every entry: runs submitted through the gateway (a real HTTP server), the
tasks topic (as an upstream system does) and the CLI get their tenant's budget ceilings,
and a tenant's runs beyond its `max_concurrent_runs` wait queued until a run of that
tenant ends, while other tenants' runs go on. Assertions are on events, counts and log
order; waits only guard against a hang."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from agentstream.cli import main
from agentstream.config import Settings
from agentstream.runtime import AgentRuntime
from handlers.planner import PlannerSettings
from handlers.policy import TenantPolicies, ToolPolicy
from streams.codec import EventCodec
from streams.envelope import new_run_id, root_meta
from streams.events import Budget, Event, RunAdmitted, TaskSubmitted
from streams.log import EventLog, OutgoingRecord
from streams.topics import Topics
from tests.llm_servers import ProviderServer, openai_reply
from tests.support.backends import Backend
from tests.support.gateway import MODEL, RunningGateway, serve_gateway
from tests.support.goal_model import GoalModel

pytestmark = [pytest.mark.slow]

ASK = 'call ask_human {"question": "Which region?"}'
POLICIES = TenantPolicies(
    tenants={
        "acme": ToolPolicy.build({"max_concurrent_runs": 1, "budget": {"max_steps": 3, "max_usd": 0.5}}),
    }
)
TERMINAL = frozenset({"RunCompleted", "RunFailed", "RunAborted", "RunCancelled"})


def settings_for(home: Path, log_url: str, prefix: str) -> Settings:
    # One partition: every run's events are in one total order, so the log itself shows
    # how many runs of a tenant were in flight at each point.
    return Settings(
        home=home,
        log_url=log_url,
        registry_url=f"sqlite://{home}/registry.db",
        topics=Topics(prefix=prefix, partitions=1),
        store_url=f"sqlite://{home}/views.db",
    )


def most_in_flight(events: list[tuple[str, str, str]], tenant: str) -> int:
    """The most runs of `tenant` admitted and not yet ended at any point of the log
    (`events` are (run id, tenant, type) in log order)."""
    queued = {run_id for run_id, _, kind in events if kind == "RunQueued"}
    holding: set[str] = set()
    most = 0
    for run_id, owner, kind in events:
        if owner != tenant:
            continue
        if kind == "RunAdmitted" or (kind == "TaskSubmitted" and run_id not in queued):
            holding.add(run_id)
        elif kind in TERMINAL:
            holding.discard(run_id)
        most = max(most, len(holding))
    return most


# ---------------------------------------------------------------------------- the gateway


@pytest.fixture
def capped_gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningGateway]:
    """A gateway hosting the workers, acme capped at one run with budget ceilings."""
    with GoalModel() as model:
        monkeypatch.setenv("OPENAI_BASE_URL", model.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        monkeypatch.delenv("AGENTSTREAM_PRICES", raising=False)
        home = tmp_path / "home"
        settings = settings_for(home, f"sqlite://{home}/log.db", f"a{uuid.uuid4().hex[:8]}")
        with serve_gateway(
            settings, tmp_path / "tokens.json", policy=POLICIES, admission_scan_s=0.05
        ) as running:
            yield running


@pytest.mark.gateway
def test_gateway_runs_get_ceilings_and_wait_for_their_tenants_slot(
    capped_gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = capped_gateway
    with gw.client("acme-submitter") as acme, gw.client("globex-submitter") as globex:
        over = acme.post("/v1/runs", json={"goal": ASK, "max_steps": 50, "max_usd": 5.0})
        assert over.status_code == 202, "over the ceilings is capped, not refused"
        first = over.json()["run_id"]
        waiting = gw.wait_for_run("acme-submitter", first, until=lambda r: bool(r["questions"]))
        assert waiting["status"] == "suspended" and waiting["queue_position"] is None
        task = acme.get(f"/v1/runs/{first}/events").json()["events"][0]
        assert task["type"] == "TaskSubmitted"
        assert (task["budget"]["max_steps"], task["budget"]["max_usd"]) == (3, 0.5)

        second = acme.post("/v1/runs", json={"goal": "second"}).json()["run_id"]
        queued = gw.wait_for_run("acme-submitter", second, status="queued")
        third = acme.post("/v1/runs", json={"goal": "third"}).json()["run_id"]
        gw.wait_for_run("acme-submitter", third, status="queued")
        assert gw.wait_for_run("acme-submitter", second)["queue_position"] == 1
        assert gw.wait_for_run("acme-submitter", third)["queue_position"] == 2
        assert "at most 1" in queued["queued_reason"]
        assert acme.get("/v1/queue").json() == {
            "tenant": "acme",
            "queued": 2,
            "in_flight": 1,
            "max_concurrent_runs": 1,
        }
        listed = acme.get("/v1/runs", params={"status": "queued"}).json()["runs"]
        assert [r["run_id"] for r in listed] == [third, second]

        # Another tenant is never queued behind acme's backlog.
        other = globex.post("/v1/runs", json={"goal": "free", "max_steps": 50}).json()["run_id"]
        done = gw.wait_for_run("globex-submitter", other, status="completed")
        assert done["answer"] == "done: free"
        assert [e["type"] for e in globex.get(f"/v1/runs/{other}/events").json()["events"]][:2] == [
            "TaskSubmitted",
            "PlanProposed",
        ]
        assert globex.get("/v1/queue").json()["queued"] == 0
        assert [gw.wait_for_run("acme-submitter", r)["status"] for r in (second, third)] == ["queued"] * 2

        # The CLI shows the same queue.
        settings = gw.backends.settings
        for name, value in {
            "AGENTSTREAM_HOME": str(settings.home),
            "AGENTSTREAM_LOG_URL": settings.log_url,
            "AGENTSTREAM_REGISTRY_URL": settings.registry_url,
            "AGENTSTREAM_STORE_URL": str(settings.store_url),
            "AGENTSTREAM_TOPIC_PREFIX": settings.topics.prefix,
            "AGENTSTREAM_PARTITIONS": "1",
        }.items():
            monkeypatch.setenv(name, value)
        result = CliRunner().invoke(main, ["runs", "--tenant", "acme", "--status", "queued", "--json"])
        assert result.exit_code == 0, result.stderr
        assert [json.loads(line)["run_id"] for line in result.stdout.splitlines()] == [third, second]
        assert "tenant acme: 2 queued, 1 in flight" in result.stderr

        # The run holding the slot ends: the queued runs start, oldest first, and complete.
        answered = gw.wait_for_run("acme-submitter", first)
        call_id = answered["questions"][0]["tool_call_id"]
        with gw.client("acme-reviewer") as reviewer:
            posted = reviewer.post(
                f"/v1/runs/{first}/answers", json={"answer": "eu", "tool_call_id": call_id}
            )
            assert posted.status_code == 202
        for run_id in (first, second, third):
            gw.wait_for_run("acme-submitter", run_id, status="completed")
        events = {r: acme.get(f"/v1/runs/{r}/events").json()["events"] for r in (first, second, third)}

    for run_id in (second, third):
        kinds = [e["type"] for e in events[run_id]]
        assert kinds[:4] == ["TaskSubmitted", "RunQueued", "RunAdmitted", "PlanProposed"]
        assert kinds[-1] == "RunCompleted" and kinds.count("RunAdmitted") == 1
    ends = {r: next(e["offset"] for e in events[r] if e["type"] == "RunCompleted") for r in events}
    admitted = {r: next(e["offset"] for e in events[r] if e["type"] == "RunAdmitted") for r in events}
    assert ends[first] < admitted[second] < ends[second] < admitted[third], "one acme run at a time"


# ---------------------------------------------------------------------------- the tasks topic


async def publish_task(
    log: EventLog, codec: EventCodec, topics: Topics, tenant: str, goal: str, key: str
) -> str:
    """Publish a task as an upstream system does; returns the run id it will get."""
    from handlers.intake import run_id_for

    task = TaskSubmitted(
        meta=root_meta(new_run_id(), tenant, "erp"),
        goal=goal,
        budget=Budget(max_steps=50, max_usd=10.0),
        upstream_idempotency_key=key,
        submitted_by="erp",
    )
    value = await codec.encode(topics.tasks, task)
    await log.append([OutgoingRecord(topics.tasks, key.encode(), value)])
    return run_id_for(tenant, key, task.meta.event_id)


async def until(runtime: AgentRuntime, run_id: str, kinds: frozenset[str]) -> list[Event]:
    """The run's events up to the first one of `kinds`."""
    seen: list[Event] = []

    async def collect() -> None:
        async for event in runtime.follow(run_id):
            seen.append(event)
            if event.type_name in kinds:
                return

    await asyncio.wait_for(collect(), 120)
    return seen


async def test_upstream_tasks_get_ceilings_and_queue_behind_their_tenants_cap(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with GoalModel() as model:
        monkeypatch.setenv("OPENAI_BASE_URL", model.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        settings = settings_for(tmp_path / "home", backend.url, backend.topics.prefix)
        runtime = AgentRuntime(
            settings,
            policy=POLICIES,
            planner=PlannerSettings(default_model=MODEL),
            memory=False,
            admission_scan_s=0.05,
        )
        await runtime.start()
        try:
            log, codec, topics = runtime.log, runtime.codec, settings.topics
            first = await publish_task(log, codec, topics, "acme", ASK, "a-1")
            await until(runtime, first, frozenset({"RunSuspended"}))
            second = await publish_task(log, codec, topics, "acme", "second", "a-2")
            third = await publish_task(log, codec, topics, "acme", "third", "a-3")
            # A malformed record and an invalid task, between the good ones.
            await log.append([OutgoingRecord(topics.tasks, b"junk", b"\x01not avro")])
            await publish_task(log, codec, topics, "acme", "   ", "a-bad")
            other = await publish_task(log, codec, topics, "globex", "free", "g-1")
            other_events = await until(runtime, other, TERMINAL)
            # The tasks topic is one partition: second and third were taken in before globex's.
            held = [(await runtime.view(r)).status for r in (second, third)]
            view = await runtime.view(first)
            await runtime.interventions("test").answer(first, "eu", "alice")
            runs = {r: await until(runtime, r, TERMINAL) for r in (first, second, third)}
            records = await log.read(topics.events, 0, 0, 10_000)
            order = []
            for record in records:
                event = await codec.decode(record.value)
                order.append((event.meta.run_id, event.meta.tenant_id, event.type_name))
            dead = await log.read(topics.dlq, 0, 0, 100)
        finally:
            await runtime.stop()

    assert [e.type_name for e in other_events][:2] == ["TaskSubmitted", "PlanProposed"], (
        "globex is not capped"
    )
    assert other_events[0].budget.max_steps == 50  # type: ignore[attr-defined]
    assert held == ["queued", "queued"]
    assert (view.max_steps, view.max_usd, view.status) == (3, 0.5, "suspended")
    for run_id, events in runs.items():
        kinds = [e.type_name for e in events]
        assert kinds[:3] == ["TaskSubmitted", "RunQueued", "RunAdmitted"], run_id
        assert kinds[-1] == "RunCompleted" and kinds.count("RunAdmitted") == 1
        assert events[0].budget.max_steps == 3  # type: ignore[attr-defined]
    admissions = [e for e in runs[second] + runs[third] if isinstance(e, RunAdmitted)]
    assert [(a.in_flight, a.max_concurrent_runs) for a in admissions] == [(0, 1), (0, 1)]
    assert most_in_flight(order, "acme") == 1
    assert {r for r, tenant, _ in order if tenant == "acme"} == {first, second, third}, (
        "the bad task started nothing"
    )
    reasons = sorted(r.header("dlq.reason").decode() for r in dead)
    assert reasons == ["handler_rejected", "wrong_magic_byte"]


# ---------------------------------------------------------------------------- the CLI


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ProviderServer]:
    monkeypatch.setenv("AGENTSTREAM_HOME", str(tmp_path / "home"))
    for name in ("AGENTSTREAM_LOG_URL", "AGENTSTREAM_REGISTRY_URL", "AGENTSTREAM_TOPIC_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    with ProviderServer() as server:
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        yield server


def test_cli_run_goes_through_the_intake_under_the_tenants_policy(
    cli_env: ProviderServer, tmp_path: Path
) -> None:
    cli_env.script(
        openai_reply("Thinking.", [("c", "calculator", {"expression": "1 + 1"})]), openai_reply("2")
    )
    policy = tmp_path / "policy.json"
    policy.write_text(
        json.dumps({"tenants": {"acme": {"max_concurrent_runs": 1, "budget": {"max_steps": 1}}}})
    )
    args = ["run", "1+1?", "--model", "openai:gpt-4o-mini", "--tenant", "acme", "--policy", str(policy)]
    result = CliRunner().invoke(main, [*args, "--max-steps", "9", "--json"])
    outcome = json.loads(result.stdout)
    # The ceiling of one step holds although the command asked for nine.
    assert (outcome["status"], outcome["steps"]) == ("aborted", 1), outcome
    assert result.exit_code == 1
    events = CliRunner().invoke(main, ["events", outcome["run_id"], "--json"]).stdout.splitlines()
    kinds = [json.loads(line)["type"] for line in events]
    assert kinds[:3] == ["TaskSubmitted", "RunQueued", "RunAdmitted"]
    assert json.loads(events[0])["budget"]["max_steps"] == 1
