"""`agentstream projections`: rebuild and status on the embedded default."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from agentstream.cli_projections import projections_cli
from agentstream.config import Settings
from streams.backends import open_log
from streams.codec import EventCodec
from streams.registry import open_registry
from tests.support.runs import publish, simulate

pytestmark = pytest.mark.unit


@pytest.fixture
def settings(home: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.delenv("AGENTSTREAM_STORE_URL", raising=False)
    monkeypatch.setenv("AGENTSTREAM_PARTITIONS", "2")
    return Settings.from_env()


def _publish(settings: Settings, runs: int) -> int:
    async def go() -> int:
        log = open_log(settings.log_url)
        registry = open_registry(settings.registry_url)
        for spec in settings.topics.specs():
            await log.create_topic(spec)
        events = simulate(seed=1, runs=runs)
        await publish(log, EventCodec(registry), settings.topics.events, events)
        await log.close()
        await registry.aclose()
        return len(events)

    return asyncio.run(go())


def test_status_shows_lag_then_rebuild_catches_up(settings: Settings) -> None:
    count = _publish(settings, 10)
    runner = CliRunner()
    before = runner.invoke(projections_cli, ["status"])
    assert before.exit_code == 0, before.output
    lines = before.output.splitlines()
    assert lines[0].split()[:4] == ["PROJECTION", "APPLIED", "END", "LAG"]
    assert {line.split()[0]: int(line.split()[3]) for line in lines[1:]} == {
        "run_state": count,
        "episodic": count,
        "approvals": count,
        "cost_ledger": count,
        "tool_failures": count,
    }

    rebuilt = runner.invoke(projections_cli, ["rebuild", "--batch-size", "100"])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert f"{count} records read, {count} events applied" in rebuilt.output
    assert (settings.home / "views.db").exists(), "the store defaults to $AGENTSTREAM_HOME/views.db"

    after = runner.invoke(projections_cli, ["status", "--json"])
    assert after.exit_code == 0, after.output
    statuses = [json.loads(line) for line in after.output.splitlines()]
    assert [s["lag"] for s in statuses] == [0, 0, 0, 0, 0]
    assert sum(p["end"] for p in statuses[0]["partitions"]) == count


def test_rebuild_of_one_view_and_of_an_unknown_one(settings: Settings) -> None:
    count = _publish(settings, 5)
    runner = CliRunner()
    one = runner.invoke(projections_cli, ["rebuild", "cost_ledger"])
    assert one.exit_code == 0, one.output
    assert one.output.startswith("rebuilt cost_ledger:")
    assert f"{count} records read" in one.output
    unknown = runner.invoke(projections_cli, ["rebuild", "nope"])
    assert unknown.exit_code == 2
    assert "no projection named 'nope'" in unknown.output
