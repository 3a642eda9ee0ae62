"""Helpers for the tests of the local sandbox launcher: a launcher on a fresh state dir
(real bubblewrap: skipped without it, failed under CI=true), a way to run one job to its
end, and a look at which processes a job left on the host."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandbox_jobs.base import JobLimits, JobResult, JobSpec, job_id_for
from sandbox_jobs.local import LocalLauncher, host_uid_for
from tests.conftest import IN_CI

WAIT_S = 60.0
"""How long a test waits for a job's result: generous, the machine is shared and slow."""


def require_bwrap() -> str:
    found = shutil.which("bwrap")
    if found:
        return found
    if IN_CI:
        pytest.fail("bubblewrap (bwrap) is required in CI: make setup installs it")
    pytest.skip("bubblewrap (bwrap) is not installed")


@pytest.fixture
async def launcher(tmp_path: Path) -> AsyncIterator[LocalLauncher]:
    require_bwrap()
    sandbox_launcher = LocalLauncher(tmp_path / "jobs")
    yield sandbox_launcher
    await sandbox_launcher.aclose()


def spec_for(argv: tuple[str, ...] | list[str], stdin: str = "", **limits: float) -> JobSpec:
    """A job spec with a fresh id; ``limits`` override JobLimits fields."""
    key = uuid.uuid4().hex
    return JobSpec(
        job_id=job_id_for(key),
        run_id="run-" + key[:8],
        tenant_id="tenant-test",
        tool_call_id="call-" + key[:8],
        argv=tuple(argv),
        limits=JobLimits(**limits),  # type: ignore[arg-type]
        stdin=stdin,
    )


async def run_job(launcher: LocalLauncher, spec: JobSpec) -> JobResult:
    await launcher.launch(spec)
    return await launcher.wait(spec.job_id, WAIT_S)


async def run_python(launcher: LocalLauncher, code: str, **limits: float) -> JobResult:
    return await run_job(launcher, spec_for(("python3", "-c", code), **limits))


def job_processes(job_id: str) -> list[int]:
    """Host pids running as the job's own host uid (only meaningful when the tests run
    as root, where every job gets one; otherwise an empty list)."""
    if os.geteuid() != 0:
        return []
    uid = str(host_uid_for(job_id))
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:") and uid in line.split()[1:]:
                found.append(int(entry))
    return found


def _live(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if "\nState:\tZ" not in status:  # a zombie is dead, only not reaped yet
            alive.append(pid)
    return alive


async def leftover_processes(job_id: str, patience_s: float = 10.0) -> list[int]:
    """The job's host processes still alive once ``patience_s`` has passed (killing a pid
    namespace is asynchronous: its processes go within moments, not at once)."""
    deadline = time.monotonic() + patience_s
    while True:
        alive = _live(job_processes(job_id))
        if not alive or time.monotonic() > deadline:
            return alive
        await asyncio.sleep(0.05)
