"""Settings of one agentstream deployment, read from the environment.

| variable                  | default                           |
|---------------------------|-----------------------------------|
| AGENTSTREAM_HOME          | ~/.agentstream                    |
| AGENTSTREAM_LOG_URL       | sqlite://$AGENTSTREAM_HOME/log.db |
| AGENTSTREAM_REGISTRY_URL  | sqlite://$AGENTSTREAM_HOME/registry.db |
| AGENTSTREAM_STORE_URL     | sqlite://$AGENTSTREAM_HOME/views.db |
| AGENTSTREAM_LEDGER_URL    | sqlite://$AGENTSTREAM_HOME/ledger.db |
| AGENTSTREAM_TOPIC_PREFIX  | agentstream                       |
| AGENTSTREAM_PARTITIONS    | 4                                 |
| AGENTSTREAM_SANDBOX_URL   | local://$AGENTSTREAM_HOME/jobs    |
| AGENTSTREAM_MODEL_SLOTS   | 256 (model calls in flight per process) |
| AGENTSTREAM_TOOL_SLOTS    | 256 (tool calls in flight per process)  |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from streams.errors import ConfigError
from streams.topics import Topics


@dataclass(frozen=True)
class Settings:
    """Where the log and registry live, and how topics are named."""

    home: Path
    log_url: str
    registry_url: str
    topics: Topics
    store_url: str = ""
    """Where projections keep their views: sqlite:///PATH or cassandra://HOST:PORT/KEYSPACE."""
    ledger_url: str = ""
    """The idempotency ledger tool calls claim before running: sqlite:///PATH or
    cassandra://HOST:PORT/KEYSPACE. Workers on several machines must share one."""
    sandbox_url: str = ""
    """Where sandboxed tools (run_python, run_shell) run their jobs: local://STATE_DIR or
    k8s://NAMESPACE; empty leaves those tools out."""
    model_slots: int = 256
    """Model calls one process runs at once, shared fairly across tenants."""
    tool_slots: int = 256
    """Tool calls one process runs at once (sandboxed jobs not counted), shared likewise."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: str | None) -> Settings:
        env = os.environ if env is None else env
        home = Path(overrides.get("home") or env.get("AGENTSTREAM_HOME") or "~/.agentstream")
        home = home.expanduser().resolve()
        log_url = overrides.get("log_url") or env.get("AGENTSTREAM_LOG_URL") or f"sqlite://{home}/log.db"
        registry_url = (
            overrides.get("registry_url")
            or env.get("AGENTSTREAM_REGISTRY_URL")
            or f"sqlite://{home}/registry.db"
        )
        try:
            partitions = int(env.get("AGENTSTREAM_PARTITIONS", "4"))
        except ValueError as exc:
            raise ConfigError("AGENTSTREAM_PARTITIONS must be a whole number") from exc
        prefix = env.get("AGENTSTREAM_TOPIC_PREFIX", "agentstream")
        store_url = (
            overrides.get("store_url") or env.get("AGENTSTREAM_STORE_URL") or f"sqlite://{home}/views.db"
        )
        ledger_url = (
            overrides.get("ledger_url") or env.get("AGENTSTREAM_LEDGER_URL") or f"sqlite://{home}/ledger.db"
        )
        sandbox_url = (
            overrides.get("sandbox_url") or env.get("AGENTSTREAM_SANDBOX_URL") or f"local://{home}/jobs"
        )
        return cls(
            home,
            log_url,
            registry_url,
            Topics(prefix, partitions),
            store_url,
            ledger_url=ledger_url,
            sandbox_url=sandbox_url,
            model_slots=_slots(env, "AGENTSTREAM_MODEL_SLOTS"),
            tool_slots=_slots(env, "AGENTSTREAM_TOOL_SLOTS"),
        )


def _slots(env: Mapping[str, str], name: str) -> int:
    text = env.get(name, "256")
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{name} must be a whole number of at least 1: {text!r}")
    return value
