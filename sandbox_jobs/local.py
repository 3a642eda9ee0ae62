"""The local launcher: each job runs under bubblewrap on this machine, watched by its own
detached supervisor (:mod:`sandbox_jobs.supervisor`), with its state in a directory.
Supervisors are forked by a long-lived supervisor host per state dir, which saves each
job an interpreter start; without a host a launch starts one supervisor itself.

The sandbox unshares every namespace (no network at all, its own pids, users, IPC, UTS,
cgroups), sees a read-only minimal host (``/usr`` with the lib/bin links, the loader
cache, and the Python prefix only if there is no system Python), writes only to a
size-capped tmpfs at ``/tmp`` (also its cwd and HOME), runs as a non-root uid with no
capabilities and no_new_privs under a seccomp filter (:func:`seccomp_filter`), gets a
fixed small environment, and runs under rlimits on CPU time, address space, processes,
open files and file size.

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
import errno
import fcntl
import hashlib
import marshal
import os
import platform
import re
import secrets
import shutil
import signal
import struct
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

__all__ = [
    "LocalLauncher",
    "default_state_dir",
    "host_uid_for",
    "sandbox_command",
    "sandbox_environment",
    "seccomp_filter",
]

SANDBOX_UID = 1000
"""The uid (and gid) the job has inside its user namespace."""

HOST_UID_BASE = 0x7A000000
"""Per-job host uids are HOST_UID_BASE + 24 bits of the job id's hash: far above any
account's uid, so no host process shares a job's uid. Two jobs running at once share
one with odds of 1 in 16.7 million per pair; they would then share a process limit, and
stopping one would stop the other."""

HOST_IDLE_S = 30.0
"""How long the supervisor host of a state dir lives on without a job to start; 0 turns
the host off (every job then starts its own supervisor)."""

_JOB_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SUPERVISOR = str(Path(supervisor.__file__).resolve())
_ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
_DEVICE_LINKS = (
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
)
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
        # A /dev of its own with the harmless devices only: no /dev/pts (ptys are a
        # machine-wide count a job could use up), no /dev/shm.
        "--size",
        "65536",
        "--tmpfs",
        "/dev",
    ]
    for device in _DEVICES:
        cmd += ["--dev-bind", device, device]
    for link, target in _DEVICE_LINKS:
        cmd += ["--symlink", target, link]
    cmd += [
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


# x86_64 numbers of the system calls a job never needs that widen the kernel surface it
# can reach: tracing other processes, keyrings, eBPF, perf, userfaultfd, io_uring,
# module and kexec loading, mounts and namespaces, and a few admin calls.
_DENIED_SYSCALLS_X86_64 = {
    "ptrace": 101,
    "syslog": 103,
    "pivot_root": 155,
    "acct": 163,
    "mount": 165,
    "umount2": 166,
    "swapon": 167,
    "swapoff": 168,
    "reboot": 169,
    "init_module": 175,
    "delete_module": 176,
    "kexec_load": 246,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "unshare": 272,
    "perf_event_open": 298,
    "open_by_handle_at": 304,
    "setns": 308,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "finit_module": 313,
    "kexec_file_load": 320,
    "bpf": 321,
    "userfaultfd": 323,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "mount_setattr": 442,
}
_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_SYSCALL_BIT = 0x40000000


def seccomp_filter(machine: str | None = None) -> bytes | None:
    """A classic-BPF seccomp program for bwrap's ``--seccomp``: the denied system calls
    fail with EPERM, x32 calls too, and a process of another architecture is killed;
    everything else is allowed. None where there is no table for the machine."""
    if (machine or platform.machine()) != "x86_64":
        return None
    ld_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, kill, eperm = 0x7FFF0000, 0x80000000, 0x00050000 | errno.EPERM
    denied = sorted(_DENIED_SYSCALLS_X86_64.values())
    program = [(ld_abs, 0, 0, 4), (jeq, 1, 0, _AUDIT_ARCH_X86_64), (ret, 0, 0, kill), (ld_abs, 0, 0, 0)]
    checks = [(jge, _X32_SYSCALL_BIT)] + [(jeq, number) for number in denied]
    for i, (op, value) in enumerate(checks):
        to_eperm = len(checks) - i  # past the remaining checks and the allow
        program.append((op, to_eperm, 0, value))
    program += [(ret, 0, 0, allow), (ret, 0, 0, eperm)]
    return b"".join(struct.pack("<HBBI", *instruction) for instruction in program)


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


class LocalLauncher(SandboxLauncher):
    """Runs jobs in bubblewrap sandboxes on this machine, one detached supervisor per job,
    with each job's state in ``state_dir/JOB_ID`` so any process can reattach.

    Jobs get no network whatever their ``allowed_hosts`` say: an allowlist permits, and
    this launcher grants less (egress control needs a launcher that has it, k8s://).
    """

    def __init__(
        self,
        state_dir: Path | str,
        *,
        bwrap: str | None = None,
        python: str | None = None,
        host_idle_s: float = HOST_IDLE_S,
    ) -> None:
        self.state_dir = Path(state_dir)
        self._bwrap = bwrap
        self._python = python or sys.executable
        self._host_idle_s = host_idle_s

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
            "seccomp": seccomp_filter(),
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

    def _python_prefix(self) -> str | None:
        return _python_prefix()

    async def _start_supervisor(self, job_dir: Path) -> None:
        """Get the job a supervisor that has claimed it: from the state dir's supervisor
        host (started if need be), or else one started for this job alone."""
        if self._host_idle_s > 0:
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                if await self._ask_host(job_dir.name):
                    return
        code = await asyncio.to_thread(self._run_supervisor, job_dir)
        if code != 0:
            log_text = (job_dir / supervisor.LOG_FILE).read_text(errors="replace")[-2000:]
            raise LaunchError(f"the supervisor of {job_dir.name} exited with {code}: {log_text.strip()}")

    async def _ask_host(self, name: str) -> bool:
        """True if the supervisor host has the job (claimed now, or before)."""
        address = supervisor.host_address(str(self.state_dir))
        try:
            reader, writer = await asyncio.open_unix_connection(address)
        except (FileNotFoundError, ConnectionRefusedError):
            if await asyncio.to_thread(self._run_host) != 0:
                return False
            reader, writer = await asyncio.open_unix_connection(address)
        try:
            writer.write(name.encode() + b"\n")
            await writer.drain()
            reply = await asyncio.wait_for(reader.read(1), 10.0)
        finally:
            writer.close()
        return reply in (b"0", b"1")

    def _run_host(self) -> int:
        with open(self.state_dir / supervisor.HOST_LOG_FILE, "ab") as log:
            process = subprocess.Popen(
                [
                    self._python,
                    "-I",
                    "-S",
                    _SUPERVISOR,
                    "--serve",
                    str(self.state_dir),
                    str(self._host_idle_s),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={"LC_ALL": "C.UTF-8"},
                cwd="/",
                start_new_session=True,
                close_fds=True,
            )
        return process.wait()

    def _run_supervisor(self, job_dir: Path) -> int:
        with open(job_dir / supervisor.LOG_FILE, "ab") as log:
            process = subprocess.Popen(
                [self._python, "-I", "-S", _SUPERVISOR, str(job_dir)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={"LC_ALL": "C.UTF-8"},
                cwd="/",
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
        except (EOFError, ValueError, TypeError):  # cut short by a machine crash (it is not fsynced)
            reason = "the job's result was lost (the machine stopped before it reached the disk)"
            data = supervisor.outcome(job_dir.name, "failed", None, reason)
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
            self._kill_job_processes(job_dir)
            reason = "the job's supervisor ended without recording a result (was it killed?)"
            supervisor.publish_result(str(job_dir), supervisor.outcome(job_id, "failed", None, reason))
            result = self._read_result(job_dir)
        assert result is not None
        return result.state, result

    @staticmethod
    def _kill_job_processes(job_dir: Path) -> None:
        """Kill what a dead supervisor may have left: its bwrap dies with it, but a pid 1
        that had not armed its death signal yet would live on. As the job's own uid,
        ``kill -9 -1`` reaches exactly the job's processes."""
        uid = marshal.loads((job_dir / supervisor.JOB_FILE).read_bytes())["uid"]
        if uid is not None:
            subprocess.run(
                ["/bin/sh", "-c", "kill -9 -1"],
                user=uid,
                group=uid,
                extra_groups=[],
                env={},
                cwd="/",
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )

    async def state(self, job_id: str) -> JobState:
        return self._inspect(job_id)[0]

    async def result(self, job_id: str) -> JobResult | None:
        return self._inspect(job_id)[1]

    async def wait(self, job_id: str, timeout_s: float | None = None) -> JobResult:
        """The job's result once it has finished; TimeoutError after ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        polls = 0
        while True:
            result = self._inspect(job_id)[1]
            if result is not None:
                return result
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still runs after {timeout_s}s")
            # Every millisecond while short jobs end (a look costs microseconds), then less often.
            polls += 1
            await asyncio.sleep(0.001 if polls < 100 else min(0.05, 0.001 * 1.05 ** (polls - 100)))

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
        """Wake the supervisor so it sees the cancel file now (it also looks on its own).
        The pid file is the claimant's, and it is alive while the lock is held."""
        try:
            pid = int((job_dir / supervisor.PID_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return  # not written yet: the supervisor looks at the cancel file after writing it
        if self._supervisor_alive(job_dir):
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
