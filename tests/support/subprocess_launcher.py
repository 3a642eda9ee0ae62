"""A launcher for tests only: runs a job's argv as a plain child process, NO sandbox.

It exists to exercise the launch → watch → observe flow in unit tests without
bubblewrap. The product never uses it (no URL opens it); end-to-end tests use the real
local launcher. Jobs live in this process's memory, so it cannot reattach after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass, field

from sandbox_jobs.base import JobNotFound, JobResult, JobSpec, JobState, LaunchError, SandboxLauncher


def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@dataclass
class _Job:
    spec: JobSpec
    task: asyncio.Task[JobResult] | None = None
    process: asyncio.subprocess.Process | None = None
    cancelled: bool = False
    started: float = field(default_factory=time.monotonic)


class SubprocessLauncher(SandboxLauncher):
    """Runs each job as an unsandboxed subprocess of the test; counts launches."""

    def __init__(self, *, refuse: str | None = None) -> None:
        self.jobs: dict[str, _Job] = {}
        self.launches: list[str] = []
        """Job ids in the order they were actually started (a repeated launch adds nothing)."""
        self.cancels: list[str] = []
        self.deleted: list[str] = []
        self.refuse = refuse
        """When set, every launch fails with this LaunchError message."""

    async def launch(self, spec: JobSpec) -> None:
        if self.refuse is not None:
            raise LaunchError(self.refuse)
        if spec.job_id in self.jobs or spec.job_id in self.deleted:
            return
        self.launches.append(spec.job_id)
        job = _Job(spec)
        job.task = asyncio.create_task(self._run(job))
        self.jobs[spec.job_id] = job

    async def _run(self, job: _Job) -> JobResult:
        spec = job.spec
        job.process = await asyncio.create_subprocess_exec(
            *spec.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group, so a kill reaches its children
        )
        if job.cancelled:  # cancelled before it got going
            _kill(job.process)
        try:
            out, err = await asyncio.wait_for(
                job.process.communicate(spec.stdin.encode()), spec.limits.wall_s
            )
            reason = None
        except TimeoutError:
            _kill(job.process)
            out, err = await job.process.communicate()
            reason = f"wall-clock limit of {spec.limits.wall_s:g}s exceeded"
        code = job.process.returncode
        limit = spec.limits.output_bytes
        state: JobState
        if job.cancelled:
            state, code, reason = "cancelled", None, "cancelled"
        elif code is not None and code < 0:
            state, code = "failed", None
        else:
            state = "succeeded" if code == 0 else "failed"
        return JobResult(
            job_id=spec.job_id,
            state=state,
            exit_code=code,
            stdout=out[:limit].decode(errors="replace"),
            stderr=err[:limit].decode(errors="replace"),
            stdout_truncated=len(out) > limit,
            stderr_truncated=len(err) > limit,
            duration_ms=int((time.monotonic() - job.started) * 1000),
            reason=reason,
        )

    def _job(self, job_id: str) -> tuple[_Job, asyncio.Task[JobResult]]:
        job = self.jobs.get(job_id)
        if job is None or job.task is None:
            raise JobNotFound(job_id)
        return job, job.task

    async def state(self, job_id: str) -> JobState:
        _, task = self._job(job_id)
        return task.result().state if task.done() else "running"

    async def result(self, job_id: str) -> JobResult | None:
        _, task = self._job(job_id)
        return task.result() if task.done() else None

    async def cancel(self, job_id: str) -> None:
        job, task = self._job(job_id)
        self.cancels.append(job_id)
        if not task.done():
            job.cancelled = True
            if job.process is not None:
                _kill(job.process)

    async def delete(self, job_id: str) -> None:
        job = self.jobs.pop(job_id, None)
        if job is not None:
            self.deleted.append(job_id)
            await self.cancel_quietly(job)

    @staticmethod
    async def cancel_quietly(job: _Job) -> None:
        if job.task is not None and not job.task.done():
            job.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job.task

    async def aclose(self) -> None:
        for job in list(self.jobs.values()):
            if job.process is not None and job.process.returncode is None:
                _kill(job.process)
            await self.cancel_quietly(job)
