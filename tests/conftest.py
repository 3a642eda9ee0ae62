"""Shared fixtures: where the real services are, and a fresh embedded home per test.

Services are found through environment variables that `.ci/run` (and `make services-up`)
set. Without them the tests that need a service are skipped, except under CI (CI=true),
where a missing service is an error: CI must never pass by skipping.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def service_address(variable: str, what: str) -> str:
    value = os.environ.get(variable)
    if value:
        return value
    if IN_CI:
        pytest.fail(f"{what} is required in CI but {variable} is not set")
    pytest.skip(f"{what} not available: set {variable} (make services-up)")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    return service_address("AGENTSTREAM_TEST_KAFKA", "a Kafka broker")


@pytest.fixture(scope="session")
def registry_url() -> str:
    return service_address("AGENTSTREAM_TEST_REGISTRY", "a Confluent-compatible schema registry")


@pytest.fixture(scope="session")
def k8s_kubeconfig() -> str:
    """Path of a kubeconfig for a real API server (tests/services/k8s.sh up)."""
    return service_address("AGENTSTREAM_TEST_K8S", "a Kubernetes API server (kubeconfig path)")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh AGENTSTREAM_HOME for the embedded default."""
    monkeypatch.setenv("AGENTSTREAM_HOME", str(tmp_path / "home"))
    for variable in (
        "AGENTSTREAM_LOG_URL",
        "AGENTSTREAM_REGISTRY_URL",
        "AGENTSTREAM_STORE_URL",
        "AGENTSTREAM_TOPIC_PREFIX",
    ):
        monkeypatch.delenv(variable, raising=False)
    return tmp_path / "home"


from tests.support.backends import backend, log  # noqa: E402, F401  (fixtures for every suite)
