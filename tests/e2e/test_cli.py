"""The command line, as a person uses it: run a task, read its events, list topics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from agentstream.cli import main
from tests.llm_servers import ProviderServer, openai_reply


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


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_run_then_read_its_events(cli_env: ProviderServer) -> None:
    cli_env.script(
        openai_reply("Computing.", [("c", "calculator", {"expression": "6 * 7"})]),
        openai_reply("42"),
    )
    code, out, err = invoke("run", "What is 6*7?", "--model", "openai:gpt-4o-mini", "--json")
    assert code == 0, err
    outcome = json.loads(out)
    assert outcome["status"] == "completed"
    assert outcome["answer"] == "42"
    assert outcome["steps"] == 2
    assert outcome["tokens"] == 30
    run_id = outcome["run_id"]

    code, out, _ = invoke("events", run_id, "--json")
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert events[0]["type"] == "TaskSubmitted"
    assert events[-1]["type"] == "RunCompleted"
    assert all(e["meta"]["run_id"] == run_id for e in events)
    offsets = [e["offset"] for e in events]
    assert offsets == sorted(offsets)
    observation = next(e for e in events if e["type"] == "ObservationRecorded")
    assert json.loads(observation["data_json"])["result"] == 42
    assert observation["meta"]["causation_id"] in {e["meta"]["event_id"] for e in events}

    code, out, _ = invoke("events", run_id)
    assert code == 0
    assert "ToolCallDispatched" in out and "RunCompleted" in out

    code, out, _ = invoke("show", run_id, "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["status"] == "completed"
    assert len(shown["events"]) == len(events)

    code, out, _ = invoke("runs", "--json")
    assert code == 0
    (listed,) = [json.loads(line) for line in out.splitlines()]
    assert listed["run_id"] == run_id
    assert listed["status"] == "completed"
    assert listed["steps"] == 2
    code, out, _ = invoke("runs", "--tenant", "someone-else")
    assert code == 0
    assert run_id not in out

    code, out, _ = invoke("topics")
    assert code == 0
    counts = {line.split()[0]: int(line.split()[2]) for line in out.splitlines()[1:]}
    assert counts["agentstream.events"] == len(events)
    assert counts["agentstream.dlq"] == 0


def test_live_progress_shows_steps_calls_and_cost(cli_env: ProviderServer) -> None:
    cli_env.script(
        openai_reply("Let me compute.", [("c", "calculator", {"expression": "2 + 2"})]),
        openai_reply("4"),
    )
    code, out, err = invoke("run", "2+2?", "--model", "openai:gpt-4o-mini")
    assert code == 0
    assert out.strip() == "4"
    assert "step 1" in err and "Let me compute." in err
    assert "→ calculator" in err and "← calculator" in err
    assert "tokens 15" in err


def test_a_run_that_does_not_complete_exits_non_zero(cli_env: ProviderServer) -> None:
    cli_env.script(
        *[openai_reply(None, [(f"c{i}", "calculator", {"expression": f"{i}+1"})]) for i in range(3)]
    )
    code, out, _ = invoke("run", "count", "--model", "openai:gpt-4o-mini", "--max-steps", "1", "--json")
    assert code == 1
    assert json.loads(out)["status"] == "aborted"


def test_clear_errors(cli_env: ProviderServer, tmp_path: Path) -> None:
    code, _, err = invoke("events", "no-such-run")
    assert code == 1
    assert "no events for run no-such-run" in err

    code, _, err = invoke("--log", "mysql://nope", "topics")
    assert code == 2
    assert "unsupported event log URL" in err

    bad = tmp_path / "policy.json"
    bad.write_text('{"allowed_tiers": ["reckless"]}')
    code, _, err = invoke("run", "x", "--policy", str(bad))
    assert code == 2
    assert "allowed_tiers" in err

    code, _, err = invoke("run", "x", "--tool", "nowhere:Nothing")
    assert code == 2
    assert "cannot load nowhere:Nothing" in err


def test_schemas_commands() -> None:
    code, out, _ = invoke("schemas", "check")
    assert code == 0
    assert "FULL_TRANSITIVE" in out
    code, out, _ = invoke("schemas", "list")
    assert "agentstream.events.TaskSubmitted" in out


def test_a_model_that_cannot_work_is_refused_before_submitting(cli_env: ProviderServer) -> None:
    code, _, err = invoke("run", "hi", "--model", "bogus:x")
    assert code == 2
    assert "unknown model provider 'bogus'" in err
    code, _, err = invoke("run", "hi", "--model", "local:no-such-model")
    assert code == 2
    assert "unknown local model" in err
