"""`python -m tests.support.sandbox_agent`: the agent runtime as `agentstream serve` runs
it, from the same environment variables, with its launcher (the real one that
AGENTSTREAM_SANDBOX_URL names) wrapped to record every job it creates in the file
AGENTSTREAM_TEST_LAUNCHES, so a crash test can count launches across kills."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

from agentstream.config import Settings
from agentstream.runtime import AgentRuntime
from handlers.planner import PlannerSettings
from sandbox_jobs.base import open_launcher
from tests.support.counting_launcher import CountingLauncher


async def serve() -> None:
    settings = Settings.from_env()
    launcher = CountingLauncher(
        open_launcher(settings.sandbox_url), Path(os.environ["AGENTSTREAM_TEST_LAUNCHES"])
    )
    runtime = AgentRuntime(
        settings,
        planner=PlannerSettings(default_model="openai:gpt-4o-mini"),
        launcher=launcher,
        memory=False,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await runtime.start()
    try:
        while not stop.is_set():
            runtime.check_health()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    finally:
        await runtime.stop()


if __name__ == "__main__":
    asyncio.run(serve())
