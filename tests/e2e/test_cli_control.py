"""`agentstream tools` and `agentstream limits` as an operator uses them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from agentstream.cli import main
from agentstream.config import Settings
from streams.errors import ConfigError


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTSTREAM_HOME", str(tmp_path / "home"))
    for name in ("AGENTSTREAM_LOG_URL", "AGENTSTREAM_REGISTRY_URL", "AGENTSTREAM_TOPIC_PREFIX"):
        monkeypatch.delenv(name, raising=False)


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_switch_a_tool_off_and_on() -> None:
    code, _, err = invoke("tools", "list")
    assert code == 0 and "every tool is enabled" in err
    assert invoke("tools", "disable", "http_fetch", "--reason", "vendor outage", "--by", "ana")[0] == 0
    code, out, _ = invoke("tools", "list")
    assert code == 0
    assert "http_fetch" in out and "disabled" in out and "vendor outage" in out and "ana" in out
    assert invoke("tools", "enable", "http_fetch", "--by", "ana")[0] == 0
    code, out, _ = invoke("tools", "list", "--json")
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert (row["tool"], row["enabled"], row["reason"], row["by"]) == ("http_fetch", True, None, "ana")
    code, out, _ = invoke("topics")
    assert "agentstream.control" in out


def test_set_list_and_clear_rate_limits() -> None:
    assert invoke("limits", "set", "openai", "--rpm", "60", "--tpm", "90000")[0] == 0
    assert invoke("limits", "set", "anthropic:claude-sonnet-4-5", "--tpm", "5000")[0] == 0
    code, out, _ = invoke("limits", "list", "--json")
    limits = {row["provider"]: row for row in map(json.loads, out.splitlines())}
    assert (limits["openai"]["requests_per_minute"], limits["openai"]["tokens_per_minute"]) == (60, 90000)
    assert limits["anthropic:claude-sonnet-4-5"]["requests_per_minute"] is None
    assert invoke("limits", "set", "openai", "--rpm", "10")[0] == 0  # replaces the whole setting
    code, out, _ = invoke("limits", "list")
    assert code == 0 and "openai" in out and "90000" not in out
    assert invoke("limits", "clear", "openai")[0] == 0
    code, out, _ = invoke("limits", "list", "--json")
    assert [json.loads(line)["provider"] for line in out.splitlines()] == ["anthropic:claude-sonnet-4-5"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("limits", "set", "openai"), "give --rpm, --tpm or both"),
        (("limits", "set", "opnai", "--rpm", "5"), "not a provider or model spec: 'opnai'"),
        (("limits", "set", "openai:", "--rpm", "5"), "not a provider or model spec"),
        (("limits", "set", "openai", "--rpm", "0"), "requests per minute must be at least 1"),
        (("tools", "disable", "two words"), "not a tool name"),
    ],
)
def test_bad_input_is_refused_with_the_reason(args: tuple[str, ...], message: str) -> None:
    code, _, err = invoke(*args)
    assert code == 2
    assert message in err


def test_slot_counts_come_from_the_environment() -> None:
    settings = Settings.from_env({"AGENTSTREAM_MODEL_SLOTS": "8", "AGENTSTREAM_TOOL_SLOTS": "3"})
    assert (settings.model_slots, settings.tool_slots) == (8, 3)
    assert (Settings.from_env({}).model_slots, Settings.from_env({}).tool_slots) == (256, 256)
    for bad in ("0", "-1", "many"):
        with pytest.raises(ConfigError, match="AGENTSTREAM_TOOL_SLOTS must be a whole number"):
            Settings.from_env({"AGENTSTREAM_TOOL_SLOTS": bad})
