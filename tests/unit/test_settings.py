"""Settings from the environment: defaults under the home directory, URLs overridable."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentstream.config import Settings
from agentstream.runtime import AgentRuntime
from streams.errors import ConfigError

pytestmark = pytest.mark.unit


def test_defaults_live_under_the_home_directory(tmp_path: Path) -> None:
    settings = Settings.from_env({"AGENTSTREAM_HOME": str(tmp_path)})
    assert settings.log_url == f"sqlite://{tmp_path}/log.db"
    assert settings.store_url == f"sqlite://{tmp_path}/views.db"
    assert settings.ledger_url == f"sqlite://{tmp_path}/ledger.db"
    assert settings.topics.prefix == "agentstream" and settings.topics.partitions == 4


def test_every_url_can_point_elsewhere(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "AGENTSTREAM_HOME": str(tmp_path),
            "AGENTSTREAM_LOG_URL": "kafka://127.0.0.1:9092",
            "AGENTSTREAM_STORE_URL": "cassandra://127.0.0.1:9042/views",
            "AGENTSTREAM_LEDGER_URL": "cassandra://127.0.0.1:9042/ledger",
            "AGENTSTREAM_TOPIC_PREFIX": "prod",
            "AGENTSTREAM_PARTITIONS": "12",
        }
    )
    assert settings.log_url == "kafka://127.0.0.1:9092"
    assert settings.ledger_url == "cassandra://127.0.0.1:9042/ledger"
    assert settings.topics.events == "prod.events" and settings.topics.partitions == 12


def test_a_bad_partition_count_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="AGENTSTREAM_PARTITIONS"):
        Settings.from_env({"AGENTSTREAM_HOME": str(tmp_path), "AGENTSTREAM_PARTITIONS": "many"})


async def test_the_runtime_claims_tool_calls_in_the_configured_ledger(tmp_path: Path) -> None:
    shared = tmp_path / "shared" / "ledger.db"
    shared.parent.mkdir()
    settings = Settings.from_env(
        {"AGENTSTREAM_HOME": str(tmp_path / "home"), "AGENTSTREAM_LEDGER_URL": f"sqlite://{shared}"}
    )
    runtime = AgentRuntime(settings, memory=False)
    try:
        claim = await runtime.ledger.claim("k1", "run-1", "calculator")
        assert claim.state == "new"
    finally:
        await runtime.ledger.aclose()
        await runtime.store.close()
        await runtime.log.close()
        await runtime.registry.aclose()
    assert shared.exists()
    assert not (tmp_path / "home" / "ledger.db").exists()
