"""Fixtures for the model-provider tests: a loopback provider server and a fake clock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.llm_servers import ProviderServer, SleepRecorder

# Nothing listens on the discard port of loopback: a test that forgets to pass its
# server's URL fails with a connection error instead of reaching a real provider.
UNREACHABLE = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def _no_real_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AGENTSTREAM_PRICES"):
        monkeypatch.delenv(name, raising=False)
    # httpx honours proxy variables; the loopback server must be reached directly.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("OPENAI_BASE_URL", UNREACHABLE)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", UNREACHABLE)


@pytest.fixture
def server() -> Iterator[ProviderServer]:
    """A started :class:`ProviderServer`, stopped after the test."""
    with ProviderServer() as running:
        yield running


@pytest.fixture
def sleeps() -> SleepRecorder:
    """A fresh :class:`SleepRecorder`."""
    return SleepRecorder()
