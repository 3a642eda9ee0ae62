"""The escape battery: jobs that try to get out of the local sandbox, against real bwrap.

Each test runs one kind of attempt and asserts two things: the attempt failed or was
limited, and comes back as a failed or limited result the agent can read; and the host
and the worker are unaffected (no connection reached the test's loopback server, host
files are unchanged, no secret leaked, no job process outlives its result, this process
is alive, and the same launcher still runs a job).

Network tests only ever aim at loopback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import platform
import secrets
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox_jobs.base import JobResult
from sandbox_jobs.local import LocalLauncher
from tests.support.sandbox import launcher, leftover_processes, run_job, run_python, spec_for

__all__ = ["launcher"]  # the fixture, imported for pytest

pytestmark = [pytest.mark.integration, pytest.mark.sandbox]

REPO = Path(__file__).resolve().parents[2]


async def assert_host_unaffected(launcher: LocalLauncher, result: JobResult) -> None:
    """No process of the job is left, the host still forks, the launcher still works."""
    assert await leftover_processes(result.job_id) == []
    os.kill(os.getpid(), 0)
    host = await asyncio.to_thread(subprocess.run, ["true"], check=False)
    assert host.returncode == 0
    after = await run_python(launcher, "print(1)")
    assert (after.state, after.stdout) == ("succeeded", "1\n")


def nothing_at(*host_paths: str) -> bool:
    """True if none of these host paths exists."""
    return not any(os.path.lexists(path) for path in host_paths)


def observed(result: JobResult) -> dict[str, str]:
    """The job's report: one ``what: outcome`` line per attempt."""
    lines = [line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line]
    return {what: outcome for what, outcome in lines}


ATTEMPT = """
import os, sys
def attempt(what, action):
    try:
        outcome = action()
        print(f"{what}: ok {outcome!r}", flush=True)
    except BaseException as exc:
        print(f"{what}: {type(exc).__name__}", flush=True)
"""


@pytest.fixture
def tcp_server() -> Iterator[socket.socket]:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


async def test_no_tcp_connection_reaches_a_loopback_service_outside(
    launcher: LocalLauncher, tcp_server: socket.socket
) -> None:
    port = tcp_server.getsockname()[1]
    code = ATTEMPT + (
        "import socket\n"
        f"attempt('tcp', lambda: socket.create_connection(('127.0.0.1', {port}), timeout=3).close())\n"
        f"attempt('tcp-localhost', lambda: socket.create_connection(('localhost', {port}), timeout=3).close())\n"
        "attempt('interfaces', lambda: [name for _, name in socket.if_nameindex()])\n"
    )
    # Even allowlisted, loopback stays out of reach: the local launcher gives no network at all.
    spec = spec_for(("python3", "-c", code))
    result = await run_job(launcher, dataclasses.replace(spec, allowed_hosts=("127.0.0.1", "localhost")))
    seen = observed(result)
    assert seen["tcp"] == "ConnectionRefusedError"
    assert not seen["tcp-localhost"].startswith("ok")
    assert seen["interfaces"] == "ok ['lo']"
    with pytest.raises(BlockingIOError):
        tcp_server.accept()  # nothing ever connected
    await assert_host_unaffected(launcher, result)


async def test_dns_resolution_fails_and_no_query_leaves(launcher: LocalLauncher) -> None:
    resolver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    resolver.bind(("127.0.0.1", 0))
    resolver.setblocking(False)
    port = resolver.getsockname()[1]
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03org\x00\x00\x01\x00\x01"
    code = ATTEMPT + (
        "import socket\n"
        "attempt('resolve', lambda: socket.getaddrinfo('example.org', 80))\n"
        "attempt('resolv.conf', lambda: open('/etc/resolv.conf').read())\n"
        "def ask():\n"
        "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)\n"
        f"    s.sendto({query!r}, ('127.0.0.1', {port})); return s.recvfrom(512)\n"
        "attempt('query', ask)\n"
    )
    try:
        result = await run_python(launcher, code)
        seen = observed(result)
        assert seen["resolve"] == "gaierror"
        assert seen["resolv.conf"] == "FileNotFoundError"
        assert not seen["query"].startswith("ok")
        with pytest.raises(BlockingIOError):
            resolver.recvfrom(512)  # the query never reached the host's loopback
    finally:
        resolver.close()
    await assert_host_unaffected(launcher, result)


async def test_nothing_outside_the_tmpfs_is_writable(launcher: LocalLauncher, tmp_path: Path) -> None:
    host_file = tmp_path / "host.txt"
    host_file.write_text("original")
    mark = secrets.token_hex(6)
    targets = {
        "host-file": str(host_file),
        "usr": f"/usr/escape-{mark}",
        "etc": f"/etc/escape-{mark}",
        "root": f"/escape-{mark}",
        "dev": f"/dev/escape-{mark}",
        "shm": f"/dev/shm/escape-{mark}",
        "proc": "/proc/sys/kernel/hostname",
        "tmp": "/tmp/fine",
    }
    code = ATTEMPT + "".join(
        f"attempt({what!r}, lambda: open({path!r}, 'w').write('escaped'))\n" for what, path in targets.items()
    )
    code += "attempt('fill-tmpfs', lambda: open('/tmp/big', 'wb').write(b'x' * (8 << 20)))\n"
    code += "attempt('pty', lambda: open('/dev/ptmx', 'r+b'))\n"  # ptys are a machine-wide count
    result = await run_python(launcher, code, tmpfs_mb=4)
    seen = observed(result)
    assert seen.pop("tmp") == "ok 7"
    assert seen.pop("fill-tmpfs") == "OSError"  # EFBIG/ENOSPC: the tmpfs is capped
    assert seen.pop("pty") == "FileNotFoundError"
    assert seen.pop("host-file") in ("FileNotFoundError", "PermissionError")
    for what, outcome in seen.items():
        assert outcome in ("OSError", "PermissionError", "FileNotFoundError"), (what, outcome)
    assert host_file.read_text() == "original"
    assert nothing_at(f"/usr/escape-{mark}", f"/etc/escape-{mark}", f"/escape-{mark}")
    await assert_host_unaffected(launcher, result)


async def test_host_files_cannot_be_read(launcher: LocalLauncher, tmp_path: Path) -> None:
    token = secrets.token_hex(16)
    secret_file = tmp_path / "credentials"
    secret_file.write_text(token)
    paths = {
        "secret": str(secret_file),
        "shadow": "/etc/shadow",
        "passwd": "/etc/passwd",
        "hostname": "/etc/hostname",
        "repo": str(REPO / "README.md"),
        "home": str(Path.home() / ".bashrc"),
    }
    code = ATTEMPT + "".join(
        f"attempt({what!r}, lambda: open({path!r}).read())\n" for what, path in paths.items()
    )
    code += "attempt('listing', lambda: sorted(os.listdir('/')))\n"
    code += "attempt('home-dirs', lambda: os.listdir('/home'))\n"
    result = await run_python(launcher, code)
    seen = observed(result)
    assert token not in result.stdout + result.stderr
    for what in paths:
        assert seen[what] == "FileNotFoundError", (what, seen[what])
    assert seen["home-dirs"] == "FileNotFoundError"
    root = set(json.loads(seen["listing"].removeprefix("ok ").replace("'", '"')))
    assert root <= {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "proc", "dev", "tmp"}
    await assert_host_unaffected(launcher, result)


async def test_the_parents_environment_secrets_stay_outside(
    launcher: LocalLauncher, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = secrets.token_hex(16)
    monkeypatch.setenv("AGENTSTREAM_TEST_SECRET", token)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-" + token)
    code = ATTEMPT + (
        "import json\n"
        "print('env: ' + json.dumps(sorted(os.environ)))\n"
        "print(dict(os.environ))\n"
        "for pid in os.listdir('/proc'):\n"
        "    if pid.isdigit():\n"
        "        attempt('environ-' + pid, lambda: open(f'/proc/{pid}/environ', 'rb').read())\n"
    )
    result = await run_python(launcher, code)
    assert token not in result.stdout + result.stderr
    assert json.loads(observed(result)["env"]) == [
        "HOME",
        "LANG",
        "PATH",
        "PWD",
        "PYTHONDONTWRITEBYTECODE",
        "TMPDIR",
    ]
    await assert_host_unaffected(launcher, result)


async def test_a_fork_bomb_is_held_to_the_process_limit(launcher: LocalLauncher) -> None:
    code = (
        "import os, time\n"
        "made = refused = 0\n"
        "for _ in range(3000):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        refused += 1\n"
        "        continue\n"
        "    if pid == 0:\n"
        "        time.sleep(120)\n"
        "        os._exit(0)\n"
        "    made += 1\n"
        "print(f'made: {made}')\n"
        "print(f'refused: {refused}')\n"
    )
    result = await run_python(launcher, code, processes=16, wall_s=30)
    seen = observed(result)
    assert result.state == "succeeded", result
    assert int(seen["made"]) <= 16
    assert int(seen["refused"]) > 0
    await assert_host_unaffected(launcher, result)

    classic = await run_job(
        launcher, spec_for(("sh", "-c", "b() { b | b & }; b; sleep 5"), processes=16, wall_s=3)
    )
    assert classic.state == "failed"
    assert classic.reason == "wall-clock limit of 3s exceeded; killed"
    assert "fork" in classic.stderr.lower()  # the shell was refused processes on the way
    await assert_host_unaffected(launcher, classic)


async def test_a_memory_bomb_hits_the_memory_limit(launcher: LocalLauncher) -> None:
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))\n"
    result = await run_python(launcher, code, memory_mb=128)
    assert result.state == "failed"
    assert result.exit_code == 1
    assert "MemoryError" in result.stderr
    assert result.reason == "exited with code 1; the memory limit of 128 MB was hit"
    await assert_host_unaffected(launcher, result)


async def test_a_cpu_spin_is_killed_at_the_deadline(launcher: LocalLauncher) -> None:
    result = await run_python(launcher, "while True: pass", wall_s=1, cpu_s=120)
    assert result.state == "failed"
    assert result.exit_code is None
    assert result.reason == "wall-clock limit of 1s exceeded; killed"
    await assert_host_unaffected(launcher, result)


async def test_a_cpu_spin_is_stopped_by_the_cpu_time_limit(launcher: LocalLauncher) -> None:
    result = await run_python(launcher, "while True: pass", wall_s=60, cpu_s=1)
    assert result.state == "failed"
    assert result.exit_code is None
    assert result.reason == "killed by SIGXCPU; the CPU-time limit of 1s was exceeded"
    await assert_host_unaffected(launcher, result)


async def test_an_output_flood_is_capped_and_stopped(launcher: LocalLauncher) -> None:
    spec = spec_for(("yes", "flood"), output_bytes=1024)
    result = await run_job(launcher, spec)
    assert result.state == "failed"
    assert result.reason == "output flood: stdout went over 16384 bytes past its cap of 1024; killed"
    assert result.stdout == "flood\n" * 170 + "flood"[:4]
    assert result.stdout_truncated
    assert (launcher.state_dir / spec.job_id / "result").stat().st_size < 8192
    await assert_host_unaffected(launcher, result)


async def test_symlinks_lead_nowhere_outside(launcher: LocalLauncher, tmp_path: Path) -> None:
    token = secrets.token_hex(16)
    secret_file = tmp_path / "secret"
    secret_file.write_text(token)
    mark = secrets.token_hex(6)
    code = ATTEMPT + (
        f"os.symlink({str(secret_file)!r}, '/tmp/to-secret')\n"
        "attempt('via-link', lambda: open('/tmp/to-secret').read())\n"
        "os.symlink('/usr', '/tmp/to-usr')\n"
        f"attempt('write-via-link', lambda: open('/tmp/to-usr/escape-{mark}', 'w').write('x'))\n"
        "os.symlink('/proc/1/root', '/tmp/to-init-root')\n"
        f"attempt('init-root', lambda: open('/tmp/to-init-root{secret_file}').read())\n"
        f"attempt('proc-root', lambda: open('/proc/self/root/../..{secret_file}').read())\n"
        "attempt('hardlink', lambda: os.link('/usr/bin/python3', '/tmp/python3'))\n"
    )
    result = await run_python(launcher, code)
    seen = observed(result)
    assert token not in result.stdout + result.stderr
    assert seen["via-link"] == "FileNotFoundError"
    assert seen["write-via-link"] == "OSError"  # read-only file system
    assert seen["init-root"] in ("FileNotFoundError", "PermissionError")
    assert seen["proc-root"] == "FileNotFoundError"
    assert seen["hardlink"] == "OSError"  # another file system
    assert nothing_at(f"/usr/escape-{mark}")
    await assert_host_unaffected(launcher, result)


async def test_setuid_gets_no_privilege(launcher: LocalLauncher) -> None:
    code = ATTEMPT + (
        "import subprocess\n"
        "attempt('setuid', lambda: os.setuid(0))\n"
        "attempt('setgid', lambda: os.setgid(0))\n"
        "attempt('uid', lambda: (os.getuid(), os.geteuid()))\n"
        "status = open('/proc/self/status').read().splitlines()\n"
        "print('caps: ' + [l for l in status if l.startswith('CapEff')][0].split()[1])\n"
        "print('nonewprivs: ' + [l for l in status if l.startswith('NoNewPrivs')][0].split()[1])\n"
        "def run(*argv):\n"
        "    done = subprocess.run(argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)\n"
        "    return (done.returncode, done.stdout.strip())\n"
        "if os.path.exists('/usr/bin/su'):\n"
        "    attempt('su', lambda: run('/usr/bin/su', 'root', '-c', 'id -u'))\n"
        "attempt('userns', lambda: run('unshare', '--user', '--map-root-user', 'id', '-u'))\n"
    )
    result = await run_python(launcher, code)
    seen = observed(result)
    # EPERM, or EINVAL: uid and gid 0 are not even mapped into the job's user namespace.
    assert seen["setuid"] in ("PermissionError", "OSError")
    assert seen["setgid"] in ("PermissionError", "OSError")
    assert seen["uid"] == "ok (1000, 1000)"
    assert seen["caps"] == "0000000000000000"
    assert seen["nonewprivs"] == "1"
    if "su" in seen:
        assert not seen["su"].startswith("ok (0")
        assert "'0'" not in seen["su"]
    assert not seen["userns"].startswith("ok (0")
    await assert_host_unaffected(launcher, result)


async def test_the_job_cannot_kill_its_parents(launcher: LocalLauncher) -> None:
    host_pids = [os.getpid(), os.getppid()]
    code = ATTEMPT + (
        "import signal\n"
        "attempt('parent', lambda: (os.getppid(), os.kill(os.getppid(), signal.SIGKILL)))\n"
        f"for pid in {host_pids!r}:\n"
        "    attempt(f'host-{pid}', lambda: os.kill(pid, signal.SIGKILL))\n"
        "attempt('everyone', lambda: os.kill(-1, signal.SIGKILL))\n"
        "attempt('group', lambda: os.killpg(os.getpgid(os.getppid()), signal.SIGKILL))\n"
        "print('still: here')\n"
    )
    result = await run_python(launcher, code)
    seen = observed(result)
    assert seen["still"] == "here"
    assert seen["parent"] == "ok (1, None)"  # pid 1 of its own namespace, which ignores it
    for pid in host_pids:
        assert seen[f"host-{pid}"] == "ProcessLookupError"
        os.kill(pid, 0)  # alive
    assert result.state == "succeeded"
    await assert_host_unaffected(launcher, result)


async def test_risky_kernel_interfaces_are_filtered_out(launcher: LocalLauncher) -> None:
    """Not on the issue's list, but the likeliest way out of a user namespace is a kernel
    bug; a seccomp filter keeps io_uring, eBPF, perf, keyrings, ptrace and the like away."""
    if platform.machine() != "x86_64":
        pytest.skip("the seccomp table is x86_64's")
    calls = {"io_uring_setup": 425, "bpf": 321, "perf_event_open": 298, "keyctl": 250, "ptrace": 101}
    code = (
        "import ctypes, errno, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"for name, number in {calls!r}.items():\n"
        "    libc.syscall(number, 0, 0, 0, 0, 0)\n"
        "    print(f'{name}: {errno.errorcode[ctypes.get_errno()]}')\n"
        "print(f'getpid: {libc.syscall(39)}')\n"
    )
    result = await run_python(launcher, code)
    seen = observed(result)
    assert {name: seen[name] for name in calls} == dict.fromkeys(calls, "EPERM")
    assert seen["getpid"] == "2"  # the rest works: pid 2 in the job's own namespace
    await assert_host_unaffected(launcher, result)
