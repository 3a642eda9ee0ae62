"""A launcher wrapper that records, in a file, every launch that creates a job.

It asks the wrapped launcher (the real one in end-to-end tests) whether the job exists
before each launch; a launch of an unknown job id appends that id to the record. The file
outlives the process, so a test can count launches across SIGKILLs and restarts: a job
relaunched after its first run was deleted shows up twice.
"""

from __future__ import annotations

from pathlib import Path

from sandbox_jobs.base import JobNotFound, JobResult, JobSpec, JobState, SandboxLauncher


class CountingLauncher(SandboxLauncher):
    """Delegates everything to ``inner``; appends created job ids to ``record``."""

    def __init__(self, inner: SandboxLauncher, record: Path) -> None:
        self.inner = inner
        self.record = record

    def launched(self) -> list[str]:
        """Every job id this wrapper saw created, in order, repeats included."""
        return self.record.read_text().split() if self.record.exists() else []

    async def launch(self, spec: JobSpec) -> None:
        try:
            await self.inner.state(spec.job_id)
        except JobNotFound:
            with self.record.open("a") as out:
                out.write(spec.job_id + "\n")
        await self.inner.launch(spec)

    async def state(self, job_id: str) -> JobState:
        return await self.inner.state(job_id)

    async def result(self, job_id: str) -> JobResult | None:
        return await self.inner.result(job_id)

    async def cancel(self, job_id: str) -> None:
        await self.inner.cancel(job_id)

    async def delete(self, job_id: str) -> None:
        await self.inner.delete(job_id)

    async def aclose(self) -> None:
        await self.inner.aclose()
