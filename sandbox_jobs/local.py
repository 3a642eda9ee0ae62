"""The local launcher: each job runs under bubblewrap on this machine, watched by its own
detached supervisor (:mod:`sandbox_jobs.supervisor`), with its state in a directory.

The sandbox unshares every namespace (no network at all, its own pids, users, IPC, UTS,
cgroups), sees a read-only minimal host (``/usr`` with the lib/bin links, the loader
cache, and the Python prefix only if there is no system Python), writes only to a
size-capped tmpfs at ``/tmp`` (also its cwd and HOME), runs as a non-root uid with no
capabilities and no_new_privs, gets a fixed small environment, and runs under rlimits on
CPU time, address space, processes, open files and file size.

When the host process is root, each job runs as its own unprivileged host uid (derived
from the job id): Linux does not enforce RLIMIT_NPROC for uid 0, and a per-job uid also
keeps one job's process count from eating another's.

State lives in ``STATE_DIR/JOB_ID/`` (see the supervisor for the files), so any process
with the same URL reattaches: ``local://`` uses ``$AGENTSTREAM_HOME/jobs`` (default
``~/.agentstream/jobs``), ``local:///some/dir`` uses that directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import marshal
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sandbox_jobs import supervisor
from sandbox_jobs.base import (
    FINISHED,
    JobNotFound,
    JobResult,
    JobSpec,
    JobState,
    LaunchError,
    SandboxLauncher,
)

__all__ = ["LocalLauncher", "default_state_dir", "sandbox_command", "sandbox_environment"]

SANDBOX_UID = 1000
"""The uid (and gid) the job has inside its user namespace."""

HOST_UID_BASE = 0x7A000000
"""Per-job host uids are HOST_UID_BASE + 24 bits of the job id's hash: far above any
account's uid, so no host process shares a job's uid."""

_JOB_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SUPERVISOR = str(Path(supervisor.__file__).resolve())
_ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_ETC_FILES = ("/etc/ld.so.cache", "/etc/alternatives", "/etc/localtime")


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$AGENTSTREAM_HOME/jobs``, the home defaulting to ``~/.agentstream`` as in
    agentstream's settings (read here directly: sandbox_jobs does not import agentstream)."""
    env = os.environ if env is None else env
    home = Path(env.get("AGENTSTREAM_HOME") or "~/.agentstream").expanduser().resolve()
    return home / "jobs"


def _python_prefix() -> str | None:
    """The host interpreter's prefix when the sandbox needs it: only if there is no
    system ``python3`` under /usr (pyenv-style installs elsewhere)."""
    if os.path.exists("/usr/bin/python3"):
        return None
    return os.path.realpath(sys.base_prefix)


def sandbox_environment(spec: JobSpec, python_prefix: str | None = None) -> dict[str, str]:
    """The job's whole environment: a fixed small set plus the spec's own variables."""
    path = "/usr/local/bin:/usr/bin:/bin"
    if python_prefix:
        path = f"{python_prefix}/bin:{path}"
    env = {"PATH": path, "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
    env.update(spec.env)
    return env


def sandbox_command(spec: JobSpec, bwrap: str, python_prefix: str | None = None) -> list[str]:
    """The bwrap command line that runs ``spec.argv`` in the sandbox."""
    cmd = [
        bwrap,
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--uid",
        str(SANDBOX_UID),
        "--gid",
        str(SANDBOX_UID),
        "--hostname",
        "sandbox",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    for name in _ROOT_LINKS:
        host = "/" + name
        if os.path.islink(host):
            cmd += ["--symlink", os.readlink(host), host]
        elif os.path.isdir(host):
            cmd += ["--ro-bind", host, host]
    for path in _ETC_FILES:
        cmd += ["--ro-bind-try", path, path]
    if python_prefix:
        cmd += ["--ro-bind", python_prefix, python_prefix]
    cmd += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        str(spec.limits.tmpfs_mb << 20),
        "--tmpfs",
        "/tmp",
        "--remount-ro",
        "/dev",
        "--remount-ro",
        "/",
        "--chdir",
        "/tmp",
        "--",
        *spec.argv,
    ]
    return cmd


def host_uid_for(job_id: str) -> int:
    """The unprivileged host uid a job runs as when the launcher runs as root."""
    return HOST_UID_BASE + int(hashlib.sha256(job_id.encode()).hexdigest()[:6], 16)


def _validate(spec: JobSpec) -> None:
    if not _JOB_ID.fullmatch(spec.job_id):
        raise LaunchError(f"job id {spec.job_id!r} is not a DNS-1123 label (use job_id_for)")
    if not spec.argv:
        raise LaunchError("the job has no command (argv is empty)")
    for arg in spec.argv:
        if not isinstance(arg, str) or "\0" in arg:
            raise LaunchError(f"argv item {arg!r} is not a string without NUL bytes")
    for name, value in spec.env.items():
        if not _ENV_NAME.fullmatch(name) or "\0" in value:
            raise LaunchError(f"environment variable {name!r} has an invalid name or value")
    if spec.allowed_hosts:
        raise LaunchError(
            "the local launcher gives jobs no network at all; "
            f"allowed_hosts {list(spec.allowed_hosts)} needs a launcher with egress control (k8s://)"
        )


class LocalLauncher(SandboxLauncher):
    """Runs jobs in bubblewrap sandboxes on this machine, one detached supervisor per job,
    with each job's state in ``state_dir/JOB_ID`` so any process can reattach."""

    def __init__(self, state_dir: Path | str, *, bwrap: str | None = None, python: str | None = None) -> None:
        self.state_dir = Path(state_dir)
        self._bwrap = bwrap
        self._python = python or sys.executable

    @classmethod
    def from_url(cls, url: str) -> LocalLauncher:
        """``local://`` (the default state dir) or ``local:///ABSOLUTE/STATE_DIR``."""
        scheme, sep, rest = url.partition("://")
        if scheme != "local" or not sep:
            raise ValueError(f"not a local launcher URL: {url!r} (expected local:// or local:///STATE_DIR)")
        if not rest:
            return cls(default_state_dir())
        if not rest.startswith("/"):
            raise ValueError(f"the state dir in {url!r} must be an absolute path: local:///STATE_DIR")
        return cls(Path(rest))

    def _bwrap_path(self) -> str:
        found = self._bwrap or shutil.which("bwrap") or shutil.which("bwrap", path=os.defpath)
        if not found or not os.access(found, os.X_OK):
            raise LaunchError("bubblewrap (bwrap) is not installed: apt-get install bubblewrap")
        return found

    def _job_dir(self, job_id: str) -> Path:
        if not _JOB_ID.fullmatch(job_id):
            raise JobNotFound(job_id)
        return self.state_dir / job_id

    # -- launch --------------------------------------------------------------------

    async def launch(self, spec: JobSpec) -> None:
        _validate(spec)
        bwrap = self._bwrap_path()
        job_dir = self._job_dir(spec.job_id)
        if not job_dir.exists():
            self._create(job_dir, spec, bwrap)
        if (job_dir / supervisor.CLAIM_FILE).exists() or (job_dir / supervisor.RESULT_FILE).exists():
            return
        await self._start_supervisor(job_dir)

    def _create(self, job_dir: Path, spec: JobSpec, bwrap: str) -> None:
        """Write the job's directory under a temporary name, then rename it into place:
        a job directory is complete or absent, and only one launch creates it."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        prefix = self._python_prefix()
        job = {
            "job_id": spec.job_id,
            "run_id": spec.run_id,
            "tenant_id": spec.tenant_id,
            "tool_call_id": spec.tool_call_id,
            "argv": sandbox_command(spec, bwrap, prefix),
            "env": sandbox_environment(spec, prefix),
            "uid": host_uid_for(spec.job_id) if os.geteuid() == 0 else None,
            "limits": {
                "wall_s": float(spec.limits.wall_s),
                "cpu_s": spec.limits.cpu_s,
                "memory_mb": spec.limits.memory_mb,
                "processes": spec.limits.processes,
                "open_files": spec.limits.open_files,
                "tmpfs_mb": spec.limits.tmpfs_mb,
                "output_bytes": spec.limits.output_bytes,
            },
        }
        tmp = Path(tempfile.mkdtemp(prefix=f".new-{spec.job_id}-", dir=self.state_dir))
        try:
            (tmp / supervisor.JOB_FILE).write_bytes(marshal.dumps(job))
            (tmp / supervisor.STDIN_FILE).write_text(spec.stdin, encoding="utf-8")
            (tmp / supervisor.LOCK_FILE).touch()
            os.rename(tmp, job_dir)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not job_dir.exists():
                raise
        else:
            with contextlib.suppress(OSError):
                fd = os.open(self.state_dir, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    def _python_prefix(self) -> str | None:
        return _python_prefix()

    async def _start_supervisor(self, job_dir: Path) -> None:
        """Start the job's supervisor and wait until it has claimed the job and detached."""
        code = await asyncio.to_thread(self._run_supervisor, job_dir)
        if code != 0:
            log_text = (job_dir / supervisor.LOG_FILE).read_text(errors="replace")[-2000:]
            raise LaunchError(f"the supervisor of {job_dir.name} exited with {code}: {log_text.strip()}")

    def _run_supervisor(self, job_dir: Path) -> int:
        with open(job_dir / supervisor.LOG_FILE, "ab") as log:
            process = subprocess.Popen(
                [self._python, "-I", "-S", _SUPERVISOR, str(job_dir)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={"LC_ALL": "C.UTF-8"},
                start_new_session=True,
                close_fds=True,
            )
        return process.wait()

    # -- state ---------------------------------------------------------------------

    @staticmethod
    def _read_result(job_dir: Path) -> JobResult | None:
        try:
            data: dict[str, Any] = marshal.loads((job_dir / supervisor.RESULT_FILE).read_bytes())
        except FileNotFoundError:
            return None
        return JobResult(
            job_id=data["job_id"],
            state=data["state"],
            exit_code=data["exit_code"],
            stdout=data["stdout"],
            stderr=data["stderr"],
            stdout_truncated=data["stdout_truncated"],
            stderr_truncated=data["stderr_truncated"],
            duration_ms=data["duration_ms"],
            reason=data["reason"],
        )

    @staticmethod
    def _supervisor_alive(job_dir: Path) -> bool:
        """True while the job's supervisor holds its lock (the kernel drops it when the
        supervisor dies, however it dies)."""
        fd = os.open(job_dir / supervisor.LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def _inspect(self, job_id: str) -> tuple[JobState, JobResult | None]:
        job_dir = self._job_dir(job_id)
        if not job_dir.is_dir():
            raise JobNotFound(job_id)
        result = self._read_result(job_dir)
        if result is not None:
            return result.state, result
        if not (job_dir / supervisor.CLAIM_FILE).exists():
            return "pending", None
        if self._supervisor_alive(job_dir):
            return "running", None
        result = self._read_result(job_dir)  # it may have finished since the first look
        if result is None:
            reason = "the job's supervisor ended without recording a result (was it killed?)"
            supervisor.publish_result(str(job_dir), supervisor.outcome(job_id, "failed", None, reason))
            result = self._read_result(job_dir)
        assert result is not None
        return result.state, result

    async def state(self, job_id: str) -> JobState:
        return self._inspect(job_id)[0]

    async def result(self, job_id: str) -> JobResult | None:
        return self._inspect(job_id)[1]

    async def wait(self, job_id: str, timeout_s: float | None = None) -> JobResult:
        """The job's result once it has finished; TimeoutError after ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        pause = 0.001
        while True:
            result = self._inspect(job_id)[1]
            if result is not None:
                return result
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still runs after {timeout_s}s")
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, 0.05)

    # -- cancel and delete -----------------------------------------------------------

    async def cancel(self, job_id: str) -> None:
        job_dir = self._job_dir(job_id)
        state, _ = self._inspect(job_id)
        if state in FINISHED:
            return
        with contextlib.suppress(FileExistsError):
            os.close(os.open(job_dir / supervisor.CANCEL_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        if not (job_dir / supervisor.CLAIM_FILE).exists():
            # Never started: a supervisor claiming it later sees the cancel file and stops.
            reason = "cancelled before it started"
            supervisor.publish_result(str(job_dir), supervisor.outcome(job_id, "cancelled", None, reason))
            return
        self._signal_supervisor(job_dir)
        with contextlib.suppress(TimeoutError):
            await self.wait(job_id, supervisor.KILL_GRACE_S + 5.0)

    def _signal_supervisor(self, job_dir: Path) -> None:
        """Wake the supervisor so it sees the cancel file now (it also looks on its own)."""
        try:
            pid = int((job_dir / supervisor.PID_FILE).read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return
        if str(job_dir).encode() in cmdline.split(b"\0") and self._supervisor_alive(job_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    async def delete(self, job_id: str) -> None:
        try:
            job_dir = self._job_dir(job_id)
            state, _ = self._inspect(job_id)
        except JobNotFound:
            return
        if state not in FINISHED:
            await self.cancel(job_id)
        trash = self.state_dir / f".deleted-{job_id}-{secrets.token_hex(4)}"
        try:
            os.rename(job_dir, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)
