"""The local launcher (``local://``) against real bubblewrap: the launcher contract.

Launch, results and exit codes, stdin, output caps, the wall clock, cancel, delete,
idempotent relaunch, and reattaching from another launcher or another process after the
launching process was SIGKILLed. The supervisor also runs in this process in a few tests
(``supervise`` directly), so its code paths are measured by coverage.
"""

from __future__ import annotations

import asyncio
import marshal
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from sandbox_jobs import supervisor
from sandbox_jobs.base import JobNotFound, JobSpec, LaunchError, open_launcher
from sandbox_jobs.local import LocalLauncher, default_state_dir, host_uid_for, sandbox_command, seccomp_filter
from tests.support.sandbox import (
    WAIT_S,
    job_processes,
    launcher,
    leftover_processes,
    require_bwrap,
    run_job,
    run_python,
    spec_for,
)

__all__ = ["launcher"]  # the fixture, imported for pytest

pytestmark = [pytest.mark.integration, pytest.mark.sandbox]

REPO = Path(__file__).resolve().parents[2]


async def wait_for_state(launcher: LocalLauncher, job_id: str, wanted: str) -> None:
    for _ in range(int(WAIT_S / 0.02)):
        if await launcher.state(job_id) == wanted:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} never became {wanted}")


async def job_started(job_id: str) -> bool:
    """Wait until the job's sandbox runs (seen as its host uid's processes); False when
    that cannot be seen (not root: jobs share the launcher's uid)."""
    if os.geteuid() != 0:
        return False
    for _ in range(int(WAIT_S / 0.02)):
        if job_processes(job_id):
            return True
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} never started")


async def test_a_job_runs_and_its_output_comes_back(launcher: LocalLauncher) -> None:
    spec = spec_for(("python3", "-c", "print(1)"))
    result = await run_job(launcher, spec)
    assert result.state == "succeeded"
    assert result.exit_code == 0
    assert result.stdout == "1\n"
    assert result.stderr == ""
    assert result.reason is None
    assert result.job_id == spec.job_id
    assert await launcher.state(spec.job_id) == "succeeded"
    assert await launcher.result(spec.job_id) == result


async def test_a_failing_job_reports_its_exit_code_and_stderr(launcher: LocalLauncher) -> None:
    result = await run_job(launcher, spec_for(("sh", "-c", "echo partial; echo oops >&2; exit 3")))
    assert result.state == "failed"
    assert result.exit_code == 3
    assert result.stdout == "partial\n"
    assert result.stderr == "oops\n"
    assert result.reason == "exited with code 3"


async def test_a_missing_command_fails_with_a_reason(launcher: LocalLauncher) -> None:
    result = await run_job(launcher, spec_for(("no-such-command-anywhere",)))
    assert result.state == "failed"
    assert result.exit_code is None
    assert result.reason is not None and "could not be set up" in result.reason
    assert "no-such-command-anywhere" in result.stderr


async def test_stdin_and_env_reach_the_job(launcher: LocalLauncher) -> None:
    spec = spec_for(("sh", "-c", 'cat; echo "[$GREETING]"'), stdin="from stdin\n")
    spec = JobSpec(**{**_fields(spec), "env": {"GREETING": "hello"}})
    result = await run_job(launcher, spec)
    assert result.stdout == "from stdin\n[hello]\n"


async def test_output_past_the_cap_is_dropped_and_flagged(launcher: LocalLauncher) -> None:
    code = "import sys; sys.stdout.write('x' * 5000); sys.stderr.write('e' * 10)"
    result = await run_python(launcher, code, output_bytes=1000)
    assert result.state == "succeeded"
    assert result.stdout == "x" * 1000
    assert result.stdout_truncated
    assert result.stderr == "e" * 10
    assert not result.stderr_truncated


async def test_open_files_are_limited(launcher: LocalLauncher) -> None:
    code = (
        "files = []\n"
        "try:\n"
        "    while len(files) < 1000:\n"
        "        files.append(open('/dev/null'))\n"
        "except OSError as exc:\n"
        "    print(len(files), exc.strerror)\n"
    )
    result = await run_python(launcher, code, open_files=32)
    opened, _, error = result.stdout.strip().partition(" ")
    assert int(opened) < 32
    assert error == "Too many open files"


async def test_the_wall_clock_kills_the_job_and_all_its_processes(launcher: LocalLauncher) -> None:
    spec = spec_for(("sh", "-c", "(trap '' TERM HUP; sleep 300) & echo started; sleep 300"), wall_s=1.5)
    result = await run_job(launcher, spec)
    assert result.state == "failed"
    assert result.exit_code is None
    assert result.reason == "wall-clock limit of 1.5s exceeded; killed"
    assert result.stdout == "started\n"
    assert await leftover_processes(spec.job_id) == []


async def test_a_running_job_can_be_cancelled(launcher: LocalLauncher) -> None:
    spec = spec_for(("sh", "-c", "echo started; sleep 300"))
    await launcher.launch(spec)
    await wait_for_state(launcher, spec.job_id, "running")
    started = await job_started(spec.job_id)
    assert await launcher.result(spec.job_id) is None
    await launcher.cancel(spec.job_id)
    result = await launcher.wait(spec.job_id, WAIT_S)
    assert result.state == "cancelled"
    assert result.reason == ("cancelled" if started else result.reason)
    assert await leftover_processes(spec.job_id) == []
    await launcher.cancel(spec.job_id)  # no error once it has ended
    assert await launcher.state(spec.job_id) == "cancelled"


async def test_a_pending_job_cancelled_never_runs(tmp_path: Path) -> None:
    require_bwrap()
    spec = spec_for(("sh", "-c", "echo ran"))
    # A supervisor that never starts (a launcher that crashed before it could) leaves the job pending.
    broken = LocalLauncher(tmp_path / "jobs", python="/bin/false")
    with pytest.raises(LaunchError, match="supervisor"):
        await broken.launch(spec)
    good = LocalLauncher(tmp_path / "jobs")
    assert await good.state(spec.job_id) == "pending"
    await good.cancel(spec.job_id)
    await good.launch(spec)
    result = await good.wait(spec.job_id, WAIT_S)
    assert result.state == "cancelled"
    assert result.stdout == ""


async def test_a_relaunch_recovers_a_job_whose_supervisor_never_started(tmp_path: Path) -> None:
    require_bwrap()
    spec = spec_for(("sh", "-c", "echo ran"))
    with pytest.raises(LaunchError):
        await LocalLauncher(tmp_path / "jobs", python="/bin/false").launch(spec)
    good = LocalLauncher(tmp_path / "jobs")
    await good.launch(spec)
    assert (await good.wait(spec.job_id, WAIT_S)).stdout == "ran\n"


async def test_launching_the_same_job_again_never_runs_it_twice(launcher: LocalLauncher) -> None:
    first = spec_for(("sh", "-c", "sleep 0.5; echo first"))
    second = JobSpec(**{**_fields(first), "argv": ("sh", "-c", "echo second")})
    await asyncio.gather(launcher.launch(first), launcher.launch(second), launcher.launch(first))
    result = await launcher.wait(first.job_id, WAIT_S)
    await launcher.launch(second)
    assert result.stdout == "first\n"
    assert await launcher.result(first.job_id) == result


async def test_another_launcher_on_the_same_dir_reattaches(launcher: LocalLauncher) -> None:
    spec = spec_for(("sh", "-c", "sleep 0.5; echo done"))
    await launcher.launch(spec)
    other = LocalLauncher(launcher.state_dir)
    result = await other.wait(spec.job_id, WAIT_S)
    assert result.stdout == "done\n"


@pytest.mark.parametrize("host_idle_s", [30.0, 0.0], ids=["host", "own-supervisor"])
async def test_a_job_outlives_its_sigkilled_launcher_and_is_collected_elsewhere(
    tmp_path: Path, host_idle_s: float
) -> None:
    require_bwrap()
    state_dir = tmp_path / "jobs"
    spec = spec_for(("sh", "-c", "sleep 1; echo survived"))
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal, sys
        from sandbox_jobs.base import JobSpec
        from sandbox_jobs.local import LocalLauncher
        spec = JobSpec(job_id={spec.job_id!r}, run_id="r", tenant_id="t", tool_call_id="c",
                       argv={spec.argv!r})
        asyncio.run(LocalLauncher({str(state_dir)!r}, host_idle_s={host_idle_s!r}).launch(spec))
        print("launched", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    worker = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert worker.returncode == -signal.SIGKILL, worker.stderr
    assert worker.stdout == "launched\n"
    fresh = open_launcher(f"local://{state_dir}")
    assert isinstance(fresh, LocalLauncher)
    assert await fresh.state(spec.job_id) in ("running", "succeeded")
    result = await fresh.wait(spec.job_id, WAIT_S)
    assert result.state == "succeeded"
    assert result.stdout == "survived\n"


async def test_a_supervisor_killed_mid_job_leaves_a_failed_result(launcher: LocalLauncher) -> None:
    spec = spec_for(("sh", "-c", "sleep 300"))
    await launcher.launch(spec)
    await wait_for_state(launcher, spec.job_id, "running")
    job_dir = launcher.state_dir / spec.job_id
    await job_started(spec.job_id)
    for _ in range(int(WAIT_S / 0.02)):
        if (job_dir / supervisor.PID_FILE).exists():
            break
        await asyncio.sleep(0.02)
    os.kill(int((job_dir / supervisor.PID_FILE).read_text()), signal.SIGKILL)
    for _ in range(int(WAIT_S / 0.02)):
        if await launcher.state(spec.job_id) != "running":
            break
        await asyncio.sleep(0.02)
    result = await launcher.result(spec.job_id)
    assert result is not None
    assert result.state == "failed"
    assert result.reason is not None and "supervisor ended without recording a result" in result.reason
    assert await leftover_processes(spec.job_id) == []  # the sandbox dies with its supervisor


async def test_delete_forgets_a_job_and_stops_a_running_one(launcher: LocalLauncher) -> None:
    done = await run_job(launcher, spec_for(("true",)))
    await launcher.delete(done.job_id)
    with pytest.raises(JobNotFound):
        await launcher.state(done.job_id)
    running = spec_for(("sleep", "300"))
    await launcher.launch(running)
    await launcher.delete(running.job_id)
    with pytest.raises(JobNotFound):
        await launcher.result(running.job_id)
    assert await leftover_processes(running.job_id) == []
    await launcher.delete(running.job_id)  # unknown: no error
    assert [p.name for p in launcher.state_dir.iterdir() if not p.name.startswith(".")] == []


async def test_unknown_jobs_are_not_found(launcher: LocalLauncher) -> None:
    with pytest.raises(JobNotFound):
        await launcher.state("sbx-0000")
    with pytest.raises(JobNotFound):
        await launcher.result("../../etc")
    with pytest.raises(JobNotFound):
        await launcher.cancel("sbx-0000")
    running = spec_for(("sleep", "300"))
    await launcher.launch(running)
    with pytest.raises(TimeoutError):
        await launcher.wait(running.job_id, 0.01)
    await launcher.cancel(running.job_id)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"argv": ()}, "no command"),
        ({"argv": ("echo", "a\0b")}, "NUL"),
        ({"job_id": "../escape"}, "DNS-1123"),
        ({"env": {"BAD NAME": "x"}}, "invalid name"),
    ],
)
async def test_bad_specs_are_refused(
    launcher: LocalLauncher, change: dict[str, object], message: str
) -> None:
    spec = JobSpec(**{**_fields(spec_for(("true",))), **change})  # type: ignore[arg-type]
    with pytest.raises(LaunchError, match=message):
        await launcher.launch(spec)


async def test_a_missing_bwrap_is_a_clear_launch_error(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="bubblewrap"):
        await LocalLauncher(tmp_path, bwrap=str(tmp_path / "no-bwrap")).launch(spec_for(("true",)))


def test_urls_name_the_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTSTREAM_HOME", str(tmp_path / "home"))
    launcher_default = open_launcher("local://")
    assert isinstance(launcher_default, LocalLauncher)
    assert launcher_default.state_dir == tmp_path / "home" / "jobs"
    assert LocalLauncher.from_url(f"local://{tmp_path}/x").state_dir == tmp_path / "x"
    monkeypatch.delenv("AGENTSTREAM_HOME")
    assert default_state_dir() == Path("~/.agentstream/jobs").expanduser().resolve()
    with pytest.raises(ValueError, match="absolute"):
        LocalLauncher.from_url("local://relative/dir")
    with pytest.raises(ValueError, match="not a local launcher URL"):
        LocalLauncher.from_url("k8s://default")


def test_the_sandbox_command_shows_the_whole_profile() -> None:
    spec = spec_for(("python3", "-c", "print(1)"), tmpfs_mb=8)
    cmd = sandbox_command(spec, "/usr/bin/bwrap", python_prefix="/opt/python")
    assert cmd[0] == "/usr/bin/bwrap"
    for flag in ("--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session"):
        assert flag in cmd
    assert "--share-net" not in cmd
    tmp = cmd.index("/tmp")
    assert cmd[tmp - 3 : tmp + 1] == ["--size", str(8 << 20), "--tmpfs", "/tmp"]
    devices = {cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--dev-bind"}
    assert devices == {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"}
    assert cmd[cmd.index("/opt/python") - 1 :][:3] == ["--ro-bind", "/opt/python", "/opt/python"]
    assert cmd[cmd.index("--") + 1 :] == ["python3", "-c", "print(1)"]
    binds = {cmd[i + 1] for i, arg in enumerate(cmd) if arg in ("--bind", "--ro-bind", "--ro-bind-try")}
    assert not any(b.startswith(("/home", "/root", "/work", str(REPO))) for b in binds)
    assert "--bind" not in cmd[: cmd.index("--")]  # nothing of the host is writable
    assert 0x7A000000 <= host_uid_for(spec.job_id) < 0x7B000000
    program = seccomp_filter("x86_64")
    assert program is not None and len(program) % 8 == 0
    assert seccomp_filter("aarch64") is None


async def test_without_a_host_each_job_starts_its_own_supervisor(tmp_path: Path) -> None:
    require_bwrap()
    direct = LocalLauncher(tmp_path / "jobs", host_idle_s=0)
    assert (await run_job(direct, spec_for(("echo", "direct")))).stdout == "direct\n"
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_unix_connection(supervisor.host_address(str(direct.state_dir)))


async def test_the_host_serves_its_state_dir_alone_and_refuses_bad_names(launcher: LocalLauncher) -> None:
    await run_job(launcher, spec_for(("true",)))  # the host is up now
    state_dir = str(launcher.state_dir)
    reader, writer = await asyncio.open_unix_connection(supervisor.host_address(state_dir))
    writer.close()
    assert supervisor.serve(state_dir, 1.0) == 0  # a second host gives way at once
    for name in (b"../etc", b".hidden", b"sbx-never-launched", b"UPPER"):
        reader, writer = await asyncio.open_unix_connection(supervisor.host_address(state_dir))
        writer.write(name + b"\n")
        await writer.drain()
        assert await reader.read(1) == b"E", name
        writer.close()


def host_processes(state_dir: Path) -> list[int]:
    """Pids of supervisor hosts serving ``state_dir`` (zombies excluded)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        if b"--serve" in argv and str(state_dir).encode() in argv and "\nState:\tZ" not in status:
            found.append(int(entry))
    return found


async def test_an_idle_host_exits_and_the_next_launch_starts_another(tmp_path: Path) -> None:
    require_bwrap()
    brief = LocalLauncher(tmp_path / "jobs", host_idle_s=0.2)
    assert (await run_job(brief, spec_for(("echo", "one")))).stdout == "one\n"
    assert host_processes(brief.state_dir)
    for _ in range(int(WAIT_S / 0.1)):
        if not host_processes(brief.state_dir):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the idle host never exited")
    assert (await run_job(brief, spec_for(("echo", "two")))).stdout == "two\n"


async def test_a_result_cut_short_reads_as_a_lost_result(launcher: LocalLauncher) -> None:
    spec = spec_for(("true",))
    await run_job(launcher, spec)
    result_file = launcher.state_dir / spec.job_id / supervisor.RESULT_FILE
    await asyncio.to_thread(result_file.write_bytes, b"")
    result = await launcher.result(spec.job_id)
    assert result is not None
    assert result.state == "failed"
    assert result.reason is not None and "result was lost" in result.reason


FORK_BOMB = """
import os, time
made = refused = 0
for _ in range(300):
    try:
        pid = os.fork()
    except OSError:
        refused += 1
        continue
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    made += 1
print(made, refused)
"""

NOT_ROOT_LAUNCH = """
import asyncio, sys
from sandbox_jobs.base import JobLimits, JobSpec
from sandbox_jobs.local import LocalLauncher

async def main():
    launcher = LocalLauncher(sys.argv[1], host_idle_s=0)
    argv = ("python3", "-c", sys.argv[2])
    spec = JobSpec("sbx-not-root", "r", "t", "c", argv, limits=JobLimits(processes=8))
    await launcher.launch(spec)
    result = await launcher.wait(spec.job_id, 60)
    print(result.state, result.stdout.strip())

asyncio.run(main())
"""


def test_a_launcher_without_root_still_holds_the_process_limit() -> None:
    """Without root there is no uid per job: the limit is counted on top of the user's
    own processes. Run as nobody, on a copy of the package that nobody can read."""
    require_bwrap()
    if os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"):
        pytest.skip("needs root (to become nobody) and /usr/bin/python3")
    nobody = 65534
    place = Path(tempfile.mkdtemp(prefix="sandbox-not-root-"))
    try:
        shutil.copytree(REPO / "sandbox_jobs", place / "sandbox_jobs")
        for path in [place, *place.rglob("*")]:
            os.chown(path, nobody, nobody)
        os.chmod(place, 0o755)
        done = subprocess.run(
            ["/usr/bin/python3", "-c", NOT_ROOT_LAUNCH, str(place / "jobs"), FORK_BOMB],
            user=nobody,
            group=nobody,
            extra_groups=[],
            env={"PYTHONPATH": str(place), "HOME": str(place)},
            cwd=place,
            capture_output=True,
            text=True,
            timeout=WAIT_S,
            check=False,
        )
    finally:
        shutil.rmtree(place, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    state, made, refused = done.stdout.split()
    assert state == "succeeded"
    assert int(made) <= 8
    assert int(refused) > 0


# -- the supervisor in this process, for coverage of its branches ----------------------


async def _prepared(tmp_path: Path, spec: JobSpec) -> str:
    """A job directory ready for a supervisor that the test runs itself."""
    require_bwrap()
    await LocalLauncher(tmp_path / "jobs", python="/bin/true").launch(spec)
    return str(tmp_path / "jobs" / spec.job_id)


@pytest.mark.parametrize(
    ("argv", "limits", "state", "reason"),
    [
        (("sh", "-c", "echo hi"), {}, "succeeded", None),
        (("sh", "-c", "exit 4"), {}, "failed", "exited with code 4"),
        (
            ("sh", "-c", "kill -SEGV $$"),
            {},
            "failed",
            "killed by SIGSEGV; it crashed, possibly at the memory",
        ),
        (("sh", "-c", "kill -USR1 $$"), {}, "failed", "killed by SIGUSR1"),
        (("sleep", "300"), {"wall_s": 0.5}, "failed", "wall-clock limit of 0.5s exceeded; killed"),
        (
            ("yes",),
            {"output_bytes": 100},
            "failed",
            "output flood: stdout went over 1600 bytes past its cap of 100",
        ),
        (
            ("python3", "-c", "b = bytearray(1 << 30)"),
            {"memory_mb": 64},
            "failed",
            "exited with code 1; the memory limit of 64 MB",
        ),
    ],
)
async def test_the_supervisor_in_process(
    tmp_path: Path, argv: tuple[str, ...], limits: dict[str, float], state: str, reason: str | None
) -> None:
    job_dir = await _prepared(tmp_path, spec_for(argv, **limits))
    lock = supervisor.claim(job_dir)
    assert lock is not None
    assert supervisor.claim(job_dir, wait_s=0.01) is None  # claimed once only
    assert supervisor.main(["supervisor.py", job_dir]) == 0  # someone else's: nothing to do
    assert supervisor.run_claimed(job_dir, lock) == 0
    result = marshal.loads(await asyncio.to_thread(Path(job_dir, supervisor.RESULT_FILE).read_bytes))
    assert result["state"] == state
    assert result["reason"] == reason or (reason and result["reason"].startswith(reason))
    assert LocalLauncher._read_result(Path(job_dir)) is not None


async def test_the_supervisor_honours_a_cancel_before_it_starts(tmp_path: Path) -> None:
    spec = spec_for(("sh", "-c", "echo ran"))
    job_dir = await _prepared(tmp_path, spec)
    await asyncio.to_thread(Path(job_dir, supervisor.CANCEL_FILE).touch)
    lock = supervisor.claim(job_dir)
    assert lock is not None
    os.close(lock)
    result = supervisor.supervise(job_dir)
    assert result["state"] == "cancelled"
    assert result["stdout"] == ""
    assert not supervisor.publish_result(job_dir, supervisor.outcome(spec.job_id, "failed", 1, "late"))


def test_processes_of_a_uid_are_counted() -> None:
    assert supervisor.processes_of(os.getuid()) >= 1
    assert supervisor.processes_of(0x7AFFFFFF) == 0


def test_the_supervisor_refuses_bad_usage() -> None:
    assert supervisor.main(["supervisor.py"]) == 2


async def test_a_supervisor_that_crashes_records_why(tmp_path: Path) -> None:
    spec = spec_for(("true",))
    job_dir = await _prepared(tmp_path, spec)
    await asyncio.to_thread(Path(job_dir, supervisor.JOB_FILE).write_bytes, b"not marshal")
    lock = supervisor.claim(job_dir)
    assert lock is not None
    assert supervisor.run_claimed(job_dir, lock) == 1
    result = await LocalLauncher(tmp_path / "jobs").result(spec.job_id)
    assert result is not None and result.state == "failed"
    assert result.reason is not None and result.reason.startswith("the supervisor failed: ValueError")


async def test_the_host_loop_in_process(tmp_path: Path) -> None:
    """The supervisor host's request loop on a listener of the test's own, in a thread."""
    require_bwrap()
    jobs = LocalLauncher(tmp_path / "jobs", python="/bin/true", host_idle_s=0)
    spec = spec_for(("echo", "via the host"))
    await jobs.launch(spec)  # /bin/true as supervisor: the job waits, unclaimed
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    address = "\0agentstream-test-host-" + spec.job_id
    listener.bind(address)
    listener.listen(8)
    loop = asyncio.create_task(
        asyncio.to_thread(supervisor.serve_requests, listener, str(jobs.state_dir), 1.0)
    )
    replies = []
    for name in (spec.job_id, spec.job_id, "../nope"):
        reader, writer = await asyncio.open_unix_connection(address)
        writer.write(name.encode() + b"\n")
        await writer.drain()
        replies.append(await reader.read(1))
        writer.close()
    _, writer = await asyncio.open_unix_connection(address)
    writer.close()  # a peer that leaves without a word does not stop the host
    assert replies == [b"1", b"0", b"E"]
    assert (await jobs.wait(spec.job_id, WAIT_S)).stdout == "via the host\n"
    await loop  # idle for a second: it returns
    assert listener.fileno() == -1


def _fields(spec: JobSpec) -> dict[str, object]:
    return {name: getattr(spec, name) for name in JobSpec.__dataclass_fields__}
