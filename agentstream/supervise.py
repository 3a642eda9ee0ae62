"""The process supervisor of `agentstream serve --processes N`.

The parent starts one child process per member, forwards SIGTERM and SIGINT to them,
restarts a child that dies (after a growing pause) and gives up, stopping the others and
exiting non-zero, when one keeps dying.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType


@dataclass(frozen=True)
class RestartPolicy:
    """How a dying child is restarted, and when the supervisor gives up on it."""

    max_restarts: int = 5
    """Deaths of one child tolerated within `window_s`; one more and the supervisor gives up."""
    window_s: float = 60.0
    backoff_s: float = 0.5
    """The pause before the first restart; it doubles with each death in the window."""
    max_backoff_s: float = 10.0
    grace_s: float = 30.0
    """How long children get to stop after the signal before they are killed."""

    def pause(self, recent_deaths: int) -> float:
        return float(min(self.backoff_s * 2 ** max(0, recent_deaths - 1), self.max_backoff_s))


@dataclass
class Child:
    """One member's command line and environment, and its current process if any."""

    index: int
    argv: Sequence[str]
    env: Mapping[str, str]
    process: subprocess.Popen[bytes] | None = None
    deaths: deque[float] = field(default_factory=deque)
    restart_at: float | None = None


class Supervisor:
    """Keeps one process per member running until it is told to stop."""

    def __init__(
        self,
        children: Sequence[Child],
        *,
        policy: RestartPolicy | None = None,
        echo: Callable[[str], None] = print,
        tick_s: float = 0.2,
    ) -> None:
        self.children = list(children)
        self.policy = policy or RestartPolicy()
        self.echo = echo
        self.tick_s = tick_s
        self._signal: int | None = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signal = signum

    def _start(self, child: Child) -> None:
        child.process = subprocess.Popen(child.argv, env=dict(child.env))
        child.restart_at = None
        self.echo(f"member {child.index}: pid {child.process.pid} started")

    def run(self) -> int:
        """Supervise until SIGTERM or SIGINT (exit code 0) or until a child keeps dying (1)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        failed = False
        try:
            for child in self.children:
                self._start(child)
            while self._signal is None and not failed:
                failed = self._tend(time.monotonic())
                time.sleep(self.tick_s)
        finally:
            self._stop_all(self._signal or signal.SIGTERM)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 1 if failed else 0

    def _tend(self, now: float) -> bool:
        """Notice deaths and restart who is due; True when a child died too often."""
        for child in self.children:
            if child.process is not None and (code := child.process.poll()) is not None:
                child.process = None
                while child.deaths and now - child.deaths[0] > self.policy.window_s:
                    child.deaths.popleft()
                child.deaths.append(now)
                if len(child.deaths) > self.policy.max_restarts:
                    self.echo(
                        f"member {child.index}: exited with {code}, {len(child.deaths)} times in"
                        f" {self.policy.window_s:g} s; giving up"
                    )
                    return True
                pause = self.policy.pause(len(child.deaths))
                self.echo(f"member {child.index}: exited with {code}; restarting in {pause:g} s")
                child.restart_at = now + pause
            if child.process is None and child.restart_at is not None and now >= child.restart_at:
                self._start(child)
        return False

    def _stop_all(self, signum: int) -> None:
        running = [c.process for c in self.children if c.process is not None]
        for process in running:
            if process.poll() is None:
                process.send_signal(signum)
        deadline = time.monotonic() + self.policy.grace_s
        for process in running:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.echo(f"pid {process.pid} did not stop in {self.policy.grace_s:g} s; killing it")
                process.kill()
                process.wait()
