"""run_python / run_shell: their schemas, the jobs they describe, and how a job's result
becomes a tool result. They never execute anything themselves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from handlers.observations import MAX_OBSERVATION_CHARS, bounded
from handlers.tools.base import NetworkPolicy, ToolContext, ToolError, ToolRegistry
from handlers.tools.sandbox import (
    MAX_TIMEOUT_S,
    RunPythonTool,
    RunShellTool,
    job_hosts,
    job_outcome,
    sandbox_tools,
)
from projections.blobs import BlobStore
from sandbox_jobs.base import JobResult, job_id_for

pytestmark = pytest.mark.unit

CTX = ToolContext(run_id="r1", tenant_id="acme", tool_call_id="c1", idempotency_key="k" * 64)


@pytest.fixture
def registry() -> ToolRegistry:
    return ToolRegistry(sandbox_tools())


def test_both_tools_are_medium_risk_with_bounded_timeouts(registry: ToolRegistry) -> None:
    assert {t.spec.name: t.spec.risk_tier for t in registry} == {
        "run_python": "medium",
        "run_shell": "medium",
    }
    for tool in registry:
        assert tool.spec.parameters["properties"]["timeout_s"]["maximum"] == MAX_TIMEOUT_S


@pytest.mark.parametrize(
    ("tool", "args", "problem"),
    [
        ("run_python", {}, "'code' is a required property"),
        ("run_python", {"code": ""}, "should be non-empty"),
        ("run_python", {"code": 1}, "is not of type 'string'"),
        ("run_python", {"code": "print(1)", "timeout_s": 301}, "is greater than the maximum of 300"),
        ("run_python", {"code": "print(1)", "timeout_s": 0}, "less than or equal to the minimum of 0"),
        ("run_python", {"code": "print(1)", "network": True}, "Additional properties are not allowed"),
        ("run_shell", {"code": "ls"}, "'command' is a required property"),
        ("run_shell", {"command": "ls", "timeout_s": "5"}, "is not of type 'number'"),
    ],
)
def test_bad_arguments_are_refused_with_the_reason(
    registry: ToolRegistry, tool: str, args: dict[str, object], problem: str
) -> None:
    errors = registry.validate(tool, args)
    assert any(problem in e for e in errors), errors


def test_good_arguments_pass(registry: ToolRegistry) -> None:
    assert registry.validate("run_python", {"code": "print(1)", "timeout_s": 2.5}) == []
    assert registry.validate("run_shell", {"command": "echo hi"}) == []


def test_python_job_reads_the_program_from_stdin_in_isolated_mode() -> None:
    spec = RunPythonTool().job_spec({"code": "print('hi')", "timeout_s": 2.5}, CTX)
    assert spec.argv == ("python3", "-I", "-")
    assert spec.stdin == "print('hi')"
    assert spec.job_id == job_id_for(CTX.idempotency_key)
    assert (spec.run_id, spec.tenant_id, spec.tool_call_id) == ("r1", "acme", "c1")
    assert spec.limits.wall_s == 2.5
    assert spec.limits.cpu_s == 3
    assert spec.allowed_hosts == ()


def test_shell_job_runs_sh_dash_c_with_the_default_timeout() -> None:
    spec = RunShellTool().job_spec({"command": "echo hi; exit 3"}, CTX)
    assert spec.argv == ("/bin/sh", "-c", "echo hi; exit 3")
    assert spec.stdin == ""
    assert spec.limits.wall_s == 30


def test_a_timeout_out_of_range_is_a_tool_error_even_unvalidated() -> None:
    with pytest.raises(ToolError, match="timeout_s"):
        RunShellTool().job_spec({"command": "true", "timeout_s": float("inf")}, CTX)


async def test_the_tools_refuse_to_run_in_process() -> None:
    with pytest.raises(ToolError, match="only as a sandboxed job"):
        await RunPythonTool().run({"code": "print(1)"}, CTX)


def test_jobs_get_the_tenant_allowlist_without_metadata_or_link_local_hosts() -> None:
    network = NetworkPolicy(
        allowed_hosts=(
            "example.org",
            "*.wikipedia.org",
            "metadata.google.internal",
            "169.254.169.254",
            "169.254.10.1",
            "[fe80::1]",
            "100.100.100.200",
            "93.184.215.14",
        )
    )
    assert job_hosts(network) == ("example.org", "*.wikipedia.org", "93.184.215.14")
    spec = RunShellTool().job_spec({"command": "true"}, ToolContext("r", "t", "c", "k", network=network))
    assert spec.allowed_hosts == ("example.org", "*.wikipedia.org", "93.184.215.14")


def result(**overrides: object) -> JobResult:
    fields: dict[str, object] = {
        "job_id": "sbx-1",
        "state": "succeeded",
        "exit_code": 0,
        "stdout": "hi\n",
        "stderr": "",
        "duration_ms": 12,
    }
    fields.update(overrides)
    return JobResult(**fields)  # type: ignore[arg-type]


def test_exit_zero_is_a_success_carrying_output_and_exit_code() -> None:
    outcome = job_outcome(result(stdout_truncated=True))
    assert outcome.ok
    assert outcome.data == {
        "exit_code": 0,
        "stdout": "hi\n",
        "stderr": "",
        "stdout_truncated": True,
        "stderr_truncated": False,
        "duration_ms": 12,
        "state": "succeeded",
    }


@pytest.mark.parametrize(
    ("job", "error"),
    [
        (result(state="failed", exit_code=3, stderr="boom"), "exited with code 3"),
        (result(state="failed", exit_code=3, reason="exited with code 3"), "exited with code 3"),
        (
            result(state="failed", exit_code=None, reason="wall-clock limit of 1s exceeded"),
            "the job ended without an exit code: wall-clock limit of 1s exceeded",
        ),
        (result(state="cancelled", exit_code=None), "the job was cancelled"),
    ],
)
def test_anything_but_exit_zero_is_a_failure_saying_why(job: JobResult, error: str) -> None:
    outcome = job_outcome(job)
    assert not outcome.ok
    assert outcome.error == error
    assert isinstance(outcome.data, dict)
    assert outcome.data["exit_code"] == job.exit_code


def test_a_job_of_an_ended_run_is_never_a_success() -> None:
    outcome = job_outcome(result(), run_status="cancelled")
    assert not outcome.ok
    assert outcome.error is not None and "the run is cancelled" in outcome.error


def test_large_output_goes_to_the_blob_store_by_handle(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    big = {"stdout": "x" * (MAX_OBSERVATION_CHARS + 10)}
    data_json, truncated, handle = bounded(big, blobs)
    assert truncated
    assert handle is not None
    assert json.loads(blobs.get(handle)) == big
    assert data_json is not None and len(json.loads(data_json)) == MAX_OBSERVATION_CHARS
    assert bounded({"stdout": "small"}, blobs) == ('{"stdout":"small"}', False, None)
    assert bounded(None, blobs) == (None, False, None)


def test_the_local_model_grammar_stays_small_with_the_sandbox_tools() -> None:
    """Code can be long; its length bound must not become thousands of grammar rules."""
    from handlers.llm import local
    from handlers.llm.messages import ToolDefinition

    tools = [
        ToolDefinition(name=s.name, description=s.description, parameters=dict(s.parameters))
        for s in (t.spec for t in sandbox_tools())
    ]
    text = local.build_grammar(tools)
    assert max(line.count("char") for line in text.splitlines()) <= 300
