"""Tools whose code comes from the model: ``run_python`` and ``run_shell``.

Code a model writes is untrusted by definition, so these tools never run in the worker's
process. They describe a sandboxed job instead (:meth:`SandboxTool.job_spec`); the tool
executor launches it and a job watcher turns its result into an observation
(:func:`job_outcome`). Their ``run`` refuses to execute anything.
"""

from __future__ import annotations

import ipaddress
import math
from abc import abstractmethod
from collections.abc import Mapping
from typing import Any

from handlers.tools.base import JSONValue, Tool, ToolContext, ToolError, ToolResult, ToolSpec
from handlers.tools.egress import METADATA_ADDRESSES, METADATA_HOSTS, NetworkPolicy
from sandbox_jobs.base import JobLimits, JobResult, JobSpec, job_id_for

__all__ = [
    "MAX_TIMEOUT_S",
    "RunPythonTool",
    "RunShellTool",
    "SandboxTool",
    "job_hosts",
    "job_outcome",
    "sandbox_tools",
]

MAX_TIMEOUT_S = 300
DEFAULT_TIMEOUT_S = 30
MAX_CODE_CHARS = 100_000
MAX_COMMAND_CHARS = 16_000


def _timeout_schema() -> dict[str, Any]:
    return {
        "type": "number",
        "exclusiveMinimum": 0,
        "maximum": MAX_TIMEOUT_S,
        "description": f"Wall-clock limit in seconds (default {DEFAULT_TIMEOUT_S}, at most {MAX_TIMEOUT_S}).",
    }


def job_hosts(network: NetworkPolicy) -> tuple[str, ...]:
    """The hosts a job may reach under ``network``: its allowlist without anything that
    names a metadata service or a link-local address, which stay blocked whatever it says."""
    hosts: list[str] = []
    for pattern in network.allowed_hosts:
        bare = pattern.removeprefix("*.")
        if bare in METADATA_HOSTS:
            continue
        try:
            ip = ipaddress.ip_address(bare.strip("[]"))
        except ValueError:
            hosts.append(pattern)
            continue
        if ip in METADATA_ADDRESSES or ip.is_link_local:
            continue
        hosts.append(pattern)
    return tuple(hosts)


class SandboxTool(Tool):
    """A tool that runs only as a sandboxed job: the executor launches
    :meth:`job_spec` instead of calling :meth:`run`."""

    @abstractmethod
    def command(self, args: Mapping[str, Any]) -> tuple[tuple[str, ...], str]:
        """The job's argv and its stdin, for arguments that passed validation."""

    def limits(self, args: Mapping[str, Any]) -> JobLimits:
        """The job's limits: the call's ``timeout_s`` bounds wall and CPU time."""
        timeout = float(args.get("timeout_s", DEFAULT_TIMEOUT_S))
        if not (math.isfinite(timeout) and 0 < timeout <= MAX_TIMEOUT_S):
            raise ToolError(f"timeout_s must be in (0, {MAX_TIMEOUT_S}]")
        return JobLimits(wall_s=timeout, cpu_s=max(1, math.ceil(timeout)))

    def job_spec(self, args: Mapping[str, Any], ctx: ToolContext) -> JobSpec:
        """The job that carries out this call; its id is stable for the idempotency key."""
        argv, stdin = self.command(args)
        return JobSpec(
            job_id=job_id_for(ctx.idempotency_key),
            run_id=ctx.run_id,
            tenant_id=ctx.tenant_id,
            tool_call_id=ctx.tool_call_id,
            argv=argv,
            stdin=stdin,
            limits=self.limits(args),
            allowed_hosts=job_hosts(ctx.network),
        )

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolResult:
        raise ToolError(f"{self.spec.name} runs only as a sandboxed job, never in the worker")


class RunPythonTool(SandboxTool):
    """Runs a Python 3 program in a sandbox and returns its exit code and output."""

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(
            name="run_python",
            description=(
                "Run a Python 3 program in an isolated sandbox (no network unless the tenant allows"
                " hosts, limited CPU, memory and time). Returns exit_code, stdout and stderr; print"
                " what you need to see."
            ),
            parameters={
                "type": "object",
                "properties": {
                    "code": {"type": "string", "minLength": 1, "maxLength": MAX_CODE_CHARS},
                    "timeout_s": _timeout_schema(),
                },
                "required": ["code"],
                "additionalProperties": False,
            },
            risk_tier="medium",
            timeout_s=MAX_TIMEOUT_S,
        )

    def command(self, args: Mapping[str, Any]) -> tuple[tuple[str, ...], str]:
        # The program goes in on stdin, not argv: no argument-length limit, and it does not
        # show up in process listings. -I: isolated mode (no user site, no PYTHON* env).
        return ("python3", "-I", "-"), str(args["code"])


class RunShellTool(SandboxTool):
    """Runs a POSIX shell command in a sandbox and returns its exit code and output."""

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(
            name="run_shell",
            description=(
                "Run a POSIX shell command (/bin/sh -c) in an isolated sandbox (no network unless"
                " the tenant allows hosts, limited CPU, memory and time). Returns exit_code, stdout"
                " and stderr."
            ),
            parameters={
                "type": "object",
                "properties": {
                    "command": {"type": "string", "minLength": 1, "maxLength": MAX_COMMAND_CHARS},
                    "timeout_s": _timeout_schema(),
                },
                "required": ["command"],
                "additionalProperties": False,
            },
            risk_tier="medium",
            timeout_s=MAX_TIMEOUT_S,
        )

    def command(self, args: Mapping[str, Any]) -> tuple[tuple[str, ...], str]:
        return ("/bin/sh", "-c", str(args["command"])), ""


def sandbox_tools() -> list[SandboxTool]:
    """Every sandboxed built-in tool."""
    return [RunPythonTool(), RunShellTool()]


def job_outcome(result: JobResult, *, run_status: str = "running") -> ToolResult:
    """A finished job as a tool result: ok only when it exited 0 in a run still going.

    A job of a run that ended (cancelled, aborted, ...) is never reported as a success:
    nobody acts on it, and its effects are not part of the run's outcome.
    """
    data: dict[str, JSONValue] = {
        "exit_code": result.exit_code,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "stdout_truncated": result.stdout_truncated,
        "stderr_truncated": result.stderr_truncated,
        "duration_ms": result.duration_ms,
        "state": result.state,
    }
    if result.reason:
        data["reason"] = result.reason
    if run_status in ("running", "suspended"):
        if result.state == "succeeded" and result.exit_code == 0:
            return ToolResult.success(data)
        if result.state == "cancelled":
            error = "the job was cancelled"
        elif result.exit_code is not None:
            error = f"exited with code {result.exit_code}"
        else:
            error = "the job ended without an exit code"
    else:
        error = f"the run is {run_status}; the job was stopped and its result discarded"
    if result.reason:
        error = result.reason if error in result.reason else f"{error}: {result.reason}"
    return ToolResult.failure(error, data)
