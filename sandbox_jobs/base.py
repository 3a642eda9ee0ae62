"""The launcher contract: what a sandboxed job is, what it returns, and how it is launched.

A job runs one command (``argv``) in a sandbox with limits and no network beyond its
allowlist. Its id is derived from the tool call's idempotency key, so launching the same
job twice (a retried or replayed dispatch) never starts it twice. A job outlives the
process that launched it: any process with the same launcher URL can ask for its state,
wait for its result, or cancel it, which is how a restarted worker reattaches.

Launchers are chosen by URL (:func:`open_launcher`): ``local://`` (bubblewrap on this
machine) or ``k8s://NAMESPACE`` (Kubernetes Jobs).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "JobLimits",
    "JobNotFound",
    "JobResult",
    "JobSpec",
    "JobState",
    "LaunchError",
    "SandboxLauncher",
    "job_id_for",
    "open_launcher",
]

JobState = Literal["pending", "running", "succeeded", "failed", "cancelled"]
"""Where a job is: not started yet, running, exited 0, ended otherwise, or cancelled."""

FINISHED: frozenset[JobState] = frozenset({"succeeded", "failed", "cancelled"})


def job_id_for(idempotency_key: str) -> str:
    """The job id for a tool call: stable for its idempotency key, and a valid DNS-1123
    label (Kubernetes object names), so every launcher can use it as is."""
    return "sbx-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class JobLimits:
    """Resource limits of one job; every launcher enforces each one or refuses the job."""

    wall_s: float = 30.0
    cpu_s: int = 30
    memory_mb: int = 256
    processes: int = 64
    open_files: int = 256
    tmpfs_mb: int = 64
    output_bytes: int = 64 * 1024  # per stream; the rest is dropped and the result says so

    def __post_init__(self) -> None:
        for name in ("wall_s", "cpu_s", "memory_mb", "processes", "open_files", "tmpfs_mb", "output_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"job limit {name} must be positive")


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One sandboxed command and whose it is.

    ``allowed_hosts`` is the tenant's egress allowlist for this job (empty: no network at
    all). Link-local and metadata addresses stay blocked whatever it says. ``labels`` go
    on whatever object the launcher creates (run id, tenant, tool call id at least).
    """

    job_id: str
    run_id: str
    tenant_id: str
    tool_call_id: str
    argv: tuple[str, ...]
    limits: JobLimits = field(default_factory=JobLimits)
    stdin: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    allowed_hosts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class JobResult:
    """What a finished job did. ``exit_code`` is None when the job was killed by a signal
    or never ran; ``reason`` then says why in words the planner can act on (for example
    "wall-clock limit of 5s exceeded", "memory limit of 256 MB exceeded")."""

    job_id: str
    state: JobState
    exit_code: int | None
    stdout: str
    stderr: str
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    duration_ms: int = 0
    reason: str | None = None


class LaunchError(RuntimeError):
    """The launcher could not start a job (bad spec, sandbox unavailable, API refused)."""


class JobNotFound(LookupError):
    """No job of that id exists for this launcher."""


class SandboxLauncher(ABC):
    """Starts sandboxed jobs and reports on them; safe to call from several processes."""

    @abstractmethod
    async def launch(self, spec: JobSpec) -> None:
        """Start the job, or do nothing if a job with ``spec.job_id`` already exists."""

    @abstractmethod
    async def state(self, job_id: str) -> JobState:
        """The job's state now; raises :class:`JobNotFound`."""

    @abstractmethod
    async def result(self, job_id: str) -> JobResult | None:
        """The finished job's result, or None while it runs; raises :class:`JobNotFound`."""

    @abstractmethod
    async def cancel(self, job_id: str) -> None:
        """Stop the job if it runs (its result says cancelled); no error if it has ended."""

    @abstractmethod
    async def delete(self, job_id: str) -> None:
        """Forget a finished job and free what it holds; no error if it is unknown."""

    async def aclose(self) -> None:
        """Release clients and connections."""


def open_launcher(url: str) -> SandboxLauncher:
    """The launcher a URL names: ``local://[STATE_DIR]`` or ``k8s://NAMESPACE``."""
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ValueError(f"launcher URL {url!r} has no scheme (expected local:// or k8s://NAMESPACE)")
    if scheme == "local":
        from sandbox_jobs.local import LocalLauncher

        return LocalLauncher.from_url(url)
    if scheme == "k8s":
        from sandbox_jobs.k8s import KubernetesLauncher

        return KubernetesLauncher.from_url(url)
    raise ValueError(f"unknown launcher {scheme!r} in {url!r} (expected local:// or k8s://NAMESPACE)")
