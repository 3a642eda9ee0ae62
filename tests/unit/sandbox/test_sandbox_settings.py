"""Where sandboxed jobs run: AGENTSTREAM_SANDBOX_URL, and what the runtime does with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentstream.config import Settings
from agentstream.runtime import AgentRuntime
from sandbox_jobs.local import LocalLauncher
from tests.support.subprocess_launcher import SubprocessLauncher

pytestmark = pytest.mark.unit


def test_the_default_is_the_local_launcher_under_the_home(tmp_path: Path) -> None:
    settings = Settings.from_env({"AGENTSTREAM_HOME": str(tmp_path)})
    assert settings.sandbox_url == f"local://{tmp_path.resolve()}/jobs"


def test_the_environment_names_another_launcher(tmp_path: Path) -> None:
    env = {"AGENTSTREAM_HOME": str(tmp_path), "AGENTSTREAM_SANDBOX_URL": "k8s://agents"}
    assert Settings.from_env(env).sandbox_url == "k8s://agents"
    assert Settings.from_env(env, sandbox_url="local:///x").sandbox_url == "local:///x"


def _settings(tmp_path: Path, sandbox_url: str) -> Settings:
    return Settings(
        tmp_path / "home", f"sqlite://{tmp_path}/log.db", f"sqlite://{tmp_path}/registry.db",
        Settings.from_env({}).topics, f"sqlite://{tmp_path}/views.db", sandbox_url=sandbox_url,
    )  # fmt: skip


async def test_the_runtime_opens_the_launcher_registers_the_tools_and_hosts_the_watcher(
    tmp_path: Path,
) -> None:
    runtime = AgentRuntime(_settings(tmp_path, f"local://{tmp_path}/jobs"), memory=False)
    try:
        assert isinstance(runtime.launcher, LocalLauncher)
        assert {"run_python", "run_shell"} <= {t.spec.name for t in runtime.tools}
        await runtime.start()
        assert runtime.watcher is not None
        assert any(t.get_name() == runtime.watcher.group for t in runtime._tasks)
    finally:
        await runtime.stop()


async def test_without_a_sandbox_url_there_are_no_sandboxed_tools(tmp_path: Path) -> None:
    runtime = AgentRuntime(_settings(tmp_path, ""), memory=False)
    try:
        assert runtime.launcher is None and runtime.watcher is None
        assert "run_python" not in runtime.tools
    finally:
        await runtime.stop()


async def test_a_given_launcher_is_used_and_closed(tmp_path: Path) -> None:
    launcher = SubprocessLauncher()
    closed: list[bool] = []

    async def aclose() -> None:
        closed.append(True)

    launcher.aclose = aclose  # type: ignore[method-assign]
    runtime = AgentRuntime(_settings(tmp_path, ""), memory=False, launcher=launcher)
    assert "run_shell" in runtime.tools
    await runtime.start()
    await runtime.stop()
    assert closed == [True]


async def test_without_bubblewrap_the_local_sandbox_tools_are_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agentstream.runtime.shutil.which", lambda *a, **k: None)
    runtime = AgentRuntime(_settings(tmp_path, f"local://{tmp_path}/jobs"), memory=False)
    try:
        assert runtime.launcher is None
        assert "run_python" not in runtime.tools
    finally:
        await runtime.stop()


def test_other_launchers_are_not_checked_for_bubblewrap(monkeypatch: pytest.MonkeyPatch) -> None:
    from agentstream.runtime import _sandbox_usable

    monkeypatch.setattr("agentstream.runtime.shutil.which", lambda *a, **k: None)
    assert _sandbox_usable("k8s://agents")
    assert not _sandbox_usable("local://")
