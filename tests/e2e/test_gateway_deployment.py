"""The gateway as deployed: `agentstream gateway` as a process, and a gateway without
workers reading the views that a separate `agentstream serve` process keeps."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agentstream.config import Settings
from agentstream.gateway.tokens import Role, issue
from streams.topics import Topics
from tests.support.gateway import serve_gateway
from tests.support.goal_model import GoalModel

pytestmark = [pytest.mark.gateway, pytest.mark.slow]


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[Settings, dict[str, str]]]:
    """Settings of an embedded deployment, and the environment that names them for a process."""
    with GoalModel() as model:
        home = tmp_path / "home"
        settings = Settings(
            home=home,
            log_url=f"sqlite://{home}/log.db",
            registry_url=f"sqlite://{home}/registry.db",
            topics=Topics(prefix=f"d{uuid.uuid4().hex[:8]}", partitions=2),
            store_url=f"sqlite://{home}/views.db",
        )
        env = {
            **os.environ,
            "AGENTSTREAM_HOME": str(home),
            "AGENTSTREAM_LOG_URL": settings.log_url,
            "AGENTSTREAM_REGISTRY_URL": settings.registry_url,
            "AGENTSTREAM_STORE_URL": settings.store_url,
            "AGENTSTREAM_TOPIC_PREFIX": settings.topics.prefix,
            "AGENTSTREAM_PARTITIONS": "2",
            "OPENAI_BASE_URL": model.base_url,
            "OPENAI_API_KEY": "test-key",
            "NO_PROXY": "127.0.0.1,localhost",
        }
        yield settings, env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(process: subprocess.Popen[bytes]) -> str:
    process.terminate()
    try:
        _, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
    return err.decode()


def poll(client: httpx.Client, path: str, accept: object, process: subprocess.Popen[bytes]) -> httpx.Response:
    deadline = time.monotonic() + 120
    response = httpx.Response(599, text="no answer yet")
    while True:
        try:
            response = client.get(path)
            if callable(accept) and accept(response):
                return response
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise AssertionError(f"the process ended: {process.communicate()[1].decode()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never became ready: {response.text}")
        time.sleep(0.2)


def test_the_gateway_command_serves_the_api_and_the_console(
    deployment: tuple[Settings, dict[str, str]], tmp_path: Path
) -> None:
    _, env = deployment
    tokens = tmp_path / "tokens.json"
    token = issue(tokens, "acme", Role.SUBMITTER, "sam")
    port = free_port()
    command = [sys.executable, "-m", "agentstream", "gateway", "--tokens", str(tokens), "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--workers", "--model", "openai:gpt-4o-mini"], env=env, stderr=subprocess.PIPE
    )
    try:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers=headers, trust_env=False, timeout=30
        ) as client:
            poll(client, "/healthz", lambda r: r.status_code == 200, process)
            console = client.get("/", follow_redirects=True)
            assert console.status_code == 200 and "<title>agentstream console</title>" in console.text
            assert client.get("/console/app.js").status_code == 200
            run_id = client.post("/v1/runs", json={"goal": "hello"}).json()["run_id"]
            done = poll(
                client,
                f"/v1/runs/{run_id}",
                lambda r: r.status_code == 200 and r.json()["status"] == "completed",
                process,
            )
            assert done.json()["answer"] == "done: hello"
    finally:
        err = stop(process)
    assert "gateway on http://127.0.0.1" in err


def test_a_gateway_without_workers_reads_what_agentstream_serve_runs(
    deployment: tuple[Settings, dict[str, str]], tmp_path: Path
) -> None:
    settings, env = deployment
    with serve_gateway(settings, tmp_path / "tokens.json", workers=False) as gateway:
        with gateway.client("acme-submitter") as client:
            accepted = client.post(
                "/v1/runs", json={"goal": "wait for the workers"}, headers={"Idempotency-Key": "w1"}
            )
            assert accepted.status_code == 202
            run_id = accepted.json()["run_id"]
            # Nothing runs it yet: the task waits on the tasks topic, and the key still holds.
            assert client.get(f"/v1/runs/{run_id}").status_code == 404
            again = client.post(
                "/v1/runs", json={"goal": "wait for the workers"}, headers={"Idempotency-Key": "w1"}
            )
            assert again.json()["run_id"] == run_id
        serve = subprocess.Popen(
            [sys.executable, "-m", "agentstream", "serve", "--model", "openai:gpt-4o-mini"],
            env={**env, "OPENBLAS_NUM_THREADS": "1"},
            stderr=subprocess.PIPE,
        )
        try:
            run = gateway.wait_for_run("acme-submitter", run_id, status="completed", timeout=180)
        finally:
            stop(serve)
    assert run["answer"] == "done: wait for the workers"
