"""The supervisor of one local sandboxed job: runs bubblewrap, enforces the wall clock and
the output caps, and records the result in the job's directory.

:class:`sandbox_jobs.local.LocalLauncher` starts it as ``python -I -S supervisor.py JOB_DIR``
in a new session. It claims the job, forks, and the parent exits at once, so the launcher
knows the job is claimed and the supervisor is no child of the worker: the worker may die,
the job goes on, and any process reads the result from the directory later.

It imports only builtin and small standard modules (no json, no project code) because its
start-up is on the path of every job's cold start. Files in a job directory:

``job``      what to run (marshal: the bwrap command, its environment, the host uid, limits)
``stdin``    the job's standard input
``lock``     flock'ed by the supervisor for as long as it lives: its liveness signal
``claimed``  created once, exclusively, by the supervisor that runs the job
``pid``      that supervisor's pid, for cancel
``cancel``   asks the supervisor to stop the job
``result``   the outcome (marshal), published once with link(2): first writer wins
"""

from __future__ import annotations

import fcntl
import marshal
import os
import resource
import select
import signal
import sys
import time
from typing import Any

JOB_FILE = "job"
STDIN_FILE = "stdin"
LOCK_FILE = "lock"
CLAIM_FILE = "claimed"
PID_FILE = "pid"
CANCEL_FILE = "cancel"
RESULT_FILE = "result"
LOG_FILE = "supervisor.log"
HOST_LOG_FILE = ".host.log"

KILL_GRACE_S = 5.0
"""How long output is still drained after the sandbox was killed."""

CANCEL_POLL_S = 0.5
"""The supervisor looks for a cancel file at least this often, signal or not."""

FLOOD_FACTOR = 16
"""Output past the cap is read and dropped; past this many caps the job is killed."""

_SIGNAL_HINTS: dict[int, str] = {
    signal.SIGXCPU: "the CPU-time limit of {cpu_s}s was exceeded",
    signal.SIGXFSZ: "the file-size limit of {tmpfs_mb} MB was exceeded",
    signal.SIGSEGV: "it crashed, possibly at the memory limit of {memory_mb} MB",
    signal.SIGKILL: "possibly at the CPU-time limit of {cpu_s}s",
}


def outcome(
    job_id: str,
    state: str,
    exit_code: int | None,
    reason: str | None,
    stdout: str = "",
    stderr: str = "",
    stdout_truncated: bool = False,
    stderr_truncated: bool = False,
    duration_ms: int = 0,
) -> dict[str, Any]:
    """A result record, the fields of :class:`sandbox_jobs.base.JobResult`."""
    return {
        "job_id": job_id,
        "state": state,
        "exit_code": exit_code,
        "reason": reason,
        "stdout": stdout,
        "stderr": stderr,
        "stdout_truncated": stdout_truncated,
        "stderr_truncated": stderr_truncated,
        "duration_ms": duration_ms,
    }


def publish_result(job_dir: str, result: dict[str, Any]) -> bool:
    """Write ``result`` as the job's result unless one exists; True if this one won.

    The file is complete before it gets its name (link(2) never replaces), so a reader
    sees no result or a whole one, and a second writer (cancel racing the supervisor, a
    reader recording a dead supervisor) cannot overwrite the first. No fsync: this must
    survive the death of processes, which it does; a machine crash ends every job anyway,
    and a job has no effect outside its sandbox, so a result lost with the machine only
    reads as a failed job (an unreadable one too, see the launcher).
    """
    tmp = os.path.join(job_dir, f".result.{os.getpid()}.{time.monotonic_ns()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, marshal.dumps(result))
    finally:
        os.close(fd)
    try:
        os.link(tmp, os.path.join(job_dir, RESULT_FILE))
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def claim(job_dir: str, wait_s: float = 5.0) -> int | None:
    """Take the job's lock and its claim; the lock fd, or None if the job is (or was)
    someone else's. Readers only hold the lock for an instant, so waiting is short."""
    lock_fd = os.open(os.path.join(job_dir, LOCK_FILE), os.O_RDWR | os.O_CLOEXEC)
    deadline = time.monotonic() + wait_s
    while True:
        if os.path.exists(os.path.join(job_dir, CLAIM_FILE)):
            os.close(lock_fd)
            return None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(lock_fd)
                return None
            time.sleep(0.002)
    try:
        os.close(os.open(os.path.join(job_dir, CLAIM_FILE), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        os.close(lock_fd)
        return None
    return lock_fd


def kill_uid(uid: int | None) -> None:
    """SIGKILL every process of the job's own host uid: as that uid, kill(-1) reaches
    exactly the job's processes, wherever they are, and nothing else."""
    if uid is None:
        return
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child exits by os._exit
        code = 0
        try:
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            for _ in range(3):  # a process forking at the instant of the first sweep is caught by the next
                try:
                    os.kill(-1, signal.SIGKILL)
                except ProcessLookupError:
                    break
        except BaseException:
            code = 1
        os._exit(code)
    os.waitpid(pid, 0)


def processes_of(uid: int) -> int:
    """How many processes the host uid has now."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                count += os.stat(f"/proc/{entry}").st_uid == uid
            except OSError:
                continue
    return count


def _exec_sandbox(job: dict[str, Any], stdin_fd: int, out_fd: int, err_fd: int) -> None:  # pragma: no cover
    """In the forked child: become the job's host uid, set the rlimits, exec bwrap.
    (Coverage cannot see it: the child execs, its measurements are never written.)"""
    try:
        os.dup2(stdin_fd, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        argv = job["argv"]
        if job.get("seccomp"):  # bwrap reads the filter from a descriptor, to its end
            filter_r, filter_w = os.pipe()
            os.write(filter_w, job["seccomp"])
            os.close(filter_w)
            os.set_inheritable(filter_r, True)
            end = argv.index("--")
            argv = [*argv[:end], "--seccomp", str(filter_r), *argv[end:]]
        uid = job["uid"]
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        limits = job["limits"]
        # RLIMIT_NPROC counts every process of the host uid: bwrap and its pid-1 reaper too,
        # and, without a uid of the job's own (launcher not root), all the user's others.
        nproc = limits["processes"] + 2 + (processes_of(os.getuid()) if uid is None else 0)
        rlimits = (
            (resource.RLIMIT_NPROC, nproc, nproc),
            (resource.RLIMIT_NOFILE, limits["open_files"], limits["open_files"]),
            (resource.RLIMIT_CPU, limits["cpu_s"], limits["cpu_s"] + 1),
            (resource.RLIMIT_AS, limits["memory_mb"] << 20, limits["memory_mb"] << 20),
            (resource.RLIMIT_FSIZE, limits["tmpfs_mb"] << 20, limits["tmpfs_mb"] << 20),
            (resource.RLIMIT_CORE, 0, 0),
        )
        for which, soft, hard in rlimits:
            resource.setrlimit(which, (soft, hard))
        os.chdir("/")
        os.execve(argv[0], argv, job["env"])
    except BaseException as exc:
        os.write(2, f"sandbox: could not start bwrap: {exc}\n".encode())
    finally:
        os._exit(127)


class _Stream:
    """One output stream of the job: what is kept (up to the cap) and what was dropped."""

    __slots__ = ("cap", "chunks", "dropped", "kept")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.chunks: list[bytes] = []
        self.kept = 0
        self.dropped = 0

    def add(self, data: bytes) -> None:
        room = self.cap - self.kept
        if room > 0:
            self.chunks.append(data[:room])
            self.kept += min(room, len(data))
        self.dropped += max(0, len(data) - max(room, 0))

    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", "replace")


def _describe_exit(code: int, stderr: str, limits: dict[str, Any]) -> tuple[str, int | None, str | None]:
    """State, exit code and reason for bwrap's exit code (128+N: the command got signal N)."""
    if code == 0:
        return "succeeded", 0, None
    if code > 128 and code - 128 < signal.NSIG:
        signum = code - 128
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        hint = _SIGNAL_HINTS.get(signum)
        reason = f"killed by {name}" + (f"; {hint.format(**limits)}" if hint else "")
        return "failed", None, reason
    if code == 1 and stderr.startswith("bwrap: "):
        return "failed", None, "the sandbox could not be set up: " + stderr.strip()
    if "MemoryError" in stderr:
        memory = limits["memory_mb"]
        return "failed", code, f"exited with code {code}; the memory limit of {memory} MB was hit"
    return "failed", code, f"exited with code {code}"


def supervise(job_dir: str) -> dict[str, Any]:
    """Run the claimed job to its end and publish its result (returned too)."""
    started = time.monotonic()
    with open(os.path.join(job_dir, JOB_FILE), "rb") as f:
        job: dict[str, Any] = marshal.load(f)
    limits = job["limits"]
    cancel_path = os.path.join(job_dir, CANCEL_FILE)

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    previous_wakeup = signal.set_wakeup_fd(wake_w)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGCHLD)}
    out_r = err_r = -1
    try:
        pid_tmp = os.path.join(job_dir, f".pid.{os.getpid()}")
        with open(pid_tmp, "w") as pid_file:
            pid_file.write(str(os.getpid()))
        os.replace(pid_tmp, os.path.join(job_dir, PID_FILE))

        reason: str | None = None
        state: str | None = None
        if os.path.exists(cancel_path):
            cancelled = outcome(job["job_id"], "cancelled", None, "cancelled before it started")
            return _finish(job_dir, cancelled, started)

        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        stdin_fd = os.open(os.path.join(job_dir, STDIN_FILE), os.O_RDONLY)
        child = os.fork()
        if child == 0:  # pragma: no cover - replaced by exec in the child
            _exec_sandbox(job, stdin_fd, out_w, err_w)
        for fd in (out_w, err_w, stdin_fd):
            os.close(fd)

        streams = {out_r: _Stream(limits["output_bytes"]), err_r: _Stream(limits["output_bytes"])}
        names = {out_r: "stdout", err_r: "stderr"}
        flood = FLOOD_FACTOR * limits["output_bytes"]
        open_fds = [out_r, err_r]
        deadline = started + limits["wall_s"]
        status: int | None = None
        killed_at: float | None = None

        def kill(why: str, as_state: str = "failed") -> None:
            nonlocal killed_at, reason, state
            if killed_at is None:
                killed_at = time.monotonic()
                reason, state = why, as_state
                # bwrap's pid 1 dies with it (--die-with-parent), and the pid namespace with pid 1;
                # but not if bwrap dies before pid 1 has armed its death signal: hence kill_uid.
                os.kill(child, signal.SIGKILL)
                kill_uid(job["uid"])

        while status is None or open_fds:
            now = time.monotonic()
            if killed_at is None and now >= deadline:
                kill(f"wall-clock limit of {limits['wall_s']:g}s exceeded; killed")
            if killed_at is not None and now >= killed_at + KILL_GRACE_S and status is not None:
                break
            limit = deadline if killed_at is None else killed_at + KILL_GRACE_S
            # Waking now and then to look for a cancel file costs a stat; it covers a signal lost.
            timeout = min(max(0.0, limit - now), CANCEL_POLL_S)
            ready, _, _ = select.select([*open_fds, wake_r], [], [], timeout)
            for fd in ready:
                if fd == wake_r:
                    while True:
                        try:
                            if not os.read(wake_r, 512):
                                break
                        except BlockingIOError:
                            break
                    continue
                data = os.read(fd, 65536)
                if not data:
                    open_fds.remove(fd)
                    continue
                streams[fd].add(data)
                if streams[fd].dropped > flood:
                    cap = limits["output_bytes"]
                    kill(f"output flood: {names[fd]} went over {flood} bytes past its cap of {cap}; killed")
            if killed_at is None and os.path.exists(cancel_path):
                kill("cancelled", "cancelled")
            if status is None:
                done, raw = os.waitpid(child, os.WNOHANG)
                if done:
                    status = raw

        if killed_at is not None:
            kill_uid(job["uid"])
        out, err = streams[out_r], streams[err_r]
        stderr = err.text()
        assert status is not None
        if state is None:
            if os.WIFSIGNALED(status):
                signum = os.WTERMSIG(status)
                state, exit_code, reason = "failed", None, f"the sandbox was killed by signal {signum}"
            else:
                state, exit_code, reason = _describe_exit(os.WEXITSTATUS(status), stderr, limits)
        else:
            exit_code = None
        result = outcome(
            job["job_id"], state, exit_code, reason, out.text(), stderr, out.dropped > 0, err.dropped > 0
        )
        return _finish(job_dir, result, started)
    finally:
        for fd in (out_r, err_r):
            if fd >= 0:
                os.close(fd)
        signal.set_wakeup_fd(previous_wakeup)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(wake_r)
        os.close(wake_w)


def _finish(job_dir: str, result: dict[str, Any], started: float) -> dict[str, Any]:
    result["duration_ms"] = int((time.monotonic() - started) * 1000)
    publish_result(job_dir, result)
    return result


def run_claimed(job_dir: str, lock_fd: int) -> int:
    """Supervise a job this process has claimed; a crash is recorded as the job's result,
    so the job never stays "running" in a reader's eyes. Releases the claim's lock."""
    try:
        supervise(job_dir)
        return 0
    except BaseException as exc:
        reason = f"the supervisor failed: {exc!r}"
        publish_result(job_dir, outcome(os.path.basename(job_dir), "failed", None, reason))
        sys.stderr.write(f"supervisor of {job_dir}: {reason}\n")
        return 1
    finally:
        os.close(lock_fd)


def host_address(state_dir: str) -> str:
    """The abstract unix socket of a state dir's supervisor host (no file, no path-length
    limit, gone when the host is; only one host can bind it). It names this supervisor
    code too, so a host still running older code is never handed new jobs."""
    import hashlib

    code = os.stat(__file__)
    identity = f"{os.path.realpath(state_dir)}\0{code.st_mtime_ns}\0{code.st_size}"
    return "\0agentstream-sandbox-host-" + hashlib.sha256(identity.encode()).hexdigest()[:32]


def serve(state_dir: str, idle_s: float) -> int:
    """Become the state dir's supervisor host: bind its socket, detach, and fork a
    supervisor for each job a launcher names, until idle for ``idle_s``.

    It saves every job an interpreter start: its supervisor is a fork of a process that
    has already imported everything. Jobs do not depend on it; if it is gone, launchers
    start a supervisor themselves. Returns 0 once serving (or if another host serves).
    """
    import socket

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(host_address(state_dir))
    except OSError:  # another host has it
        listener.close()
        return 0
    listener.listen(128)
    if os.fork() == 0:  # pragma: no cover - the detached host, measured through serve_requests
        os.chdir("/")
        serve_requests(listener, state_dir, idle_s)
        return 0
    listener.close()
    return 0  # the launcher waits for this exit; the child serves


def serve_requests(listener: Any, state_dir: str, idle_s: float) -> None:
    """The supervisor host's loop: hand each request over until idle for ``idle_s`` or
    the state dir is gone; closes ``listener``."""
    last_request = time.monotonic()
    try:
        while time.monotonic() - last_request < idle_s and os.path.isdir(state_dir):
            _reap()
            ready, _, _ = select.select([listener], [], [], min(1.0, idle_s))
            if ready:
                conn, _ = listener.accept()
                last_request = time.monotonic()
                try:
                    _hand_over(conn, listener, state_dir)
                except Exception as exc:  # one bad request (a peer gone, say) must not end the host
                    sys.stderr.write(f"supervisor host of {state_dir}: {exc!r}\n")
                finally:
                    conn.close()
    finally:
        listener.close()


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _hand_over(conn: Any, listener: Any, state_dir: str) -> None:
    """Serve one request: a job name in, ``1`` (claimed and supervised), ``0`` (someone
    else's already) or ``E`` (refused) out."""
    import socket
    import struct

    conn.settimeout(5.0)
    _, peer_uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    name = conn.recv(128).decode("ascii", "replace").strip()
    job_dir = os.path.join(state_dir, name)
    valid = name and name[0] not in ".-" and all(c in "abcdefghijklmnopqrstuvwxyz0123456789-" for c in name)
    if peer_uid != os.geteuid() or not valid or not os.path.isdir(job_dir):
        conn.sendall(b"E")
        return
    lock_fd = claim(job_dir)
    if lock_fd is None:
        conn.sendall(b"0")
        return
    try:
        pid = os.fork()
    except OSError as exc:  # the claim is ours: say why the job never ran, and let go of it
        publish_result(job_dir, outcome(name, "failed", None, f"its supervisor could not be started: {exc}"))
        os.close(lock_fd)
        raise
    if pid == 0:  # pragma: no cover - runs in the forked supervisor
        conn.close()
        listener.close()
        os.setsid()
        os._exit(run_claimed(job_dir, lock_fd))
    os.close(lock_fd)
    conn.sendall(b"1")


def main(argv: list[str]) -> int:
    """``supervisor.py JOB_DIR``: claim the job, detach, and supervise it (0 once it is
    claimed or was already someone else's). ``supervisor.py --serve STATE_DIR IDLE_S``:
    become the state dir's supervisor host. 2 on bad usage."""
    if len(argv) == 4 and argv[1] == "--serve":
        return serve(argv[2], float(argv[3]))
    if len(argv) != 2:
        sys.stderr.write("usage: supervisor.py JOB_DIR | supervisor.py --serve STATE_DIR IDLE_S\n")
        return 2
    job_dir = argv[1]
    lock_fd = claim(job_dir)
    if lock_fd is None:
        return 0
    if os.fork() != 0:
        os.close(lock_fd)  # the child's copy keeps the lock
        return 0  # the launcher waits for this exit
    return run_claimed(job_dir, lock_fd)  # pragma: no cover - the detached supervisor


if __name__ == "__main__":  # pragma: no cover - run by the launcher in its own process
    sys.exit(main(sys.argv))
