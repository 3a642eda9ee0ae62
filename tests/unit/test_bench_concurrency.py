"""benchmarks/bench_concurrency.py at a tiny size: every workload runs to completion.

Only completion counts are asserted, never times (the machine is shared and noisy).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from benchmarks.bench_concurrency import Row, markdown, measure, parse_args, scripted_reply

pytestmark = pytest.mark.unit

HAS_LANGGRAPH = importlib.util.find_spec("langgraph") is not None
SYSTEMS = ["agentstream"] + (["langgraph"] if HAS_LANGGRAPH else [])


def _goal(tag: str, steps: int) -> dict[str, str]:
    return {"role": "user", "content": f"bench {tag}: call calculator {steps} times, then answer"}


def test_the_scripted_model_calls_the_calculator_until_the_goal_s_count_then_answers() -> None:
    tag, first = scripted_reply({"model": "fast", "messages": [_goal("r1", 2)]})
    assert tag == "r1"
    call = first["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "calculator"
    assert first["model"] == "fast"

    one_result = [_goal("r1", 2), {"role": "assistant"}, {"role": "tool", "content": "2"}]
    _, second = scripted_reply({"model": "fast", "messages": one_result})
    assert second["choices"][0]["message"]["tool_calls"][0]["id"] != call["id"]

    two_results = [*one_result, {"role": "assistant"}, {"role": "tool", "content": "5"}]
    _, last = scripted_reply({"model": "fast", "messages": two_results})
    assert "tool_calls" not in last["choices"][0]["message"]
    assert last["choices"][0]["finish_reason"] == "stop"


def test_bad_options_are_refused_with_the_reason() -> None:
    with pytest.raises(SystemExit, match="unknown --system crewai"):
        parse_args(["slow-neighbour", "--system", "agentstream,crewai"])


@pytest.mark.slow
async def test_slow_neighbour_completes_every_run(tmp_path: Path) -> None:
    args = parse_args(
        ["slow-neighbour", "--system", ",".join(SYSTEMS), "--workdir", str(tmp_path)]
        + ["--slow-latency", "0.05", "--quick-runs", "3", "--quick-delay", "0.05", "--time-limit", "120"]
    )
    rows = await measure(args)
    assert [r.system for r in rows] == SYSTEMS
    for row in rows:
        assert row.values["quick runs completed"] == "3/3"
        assert row.values["slow run ok"] is True
        assert row.values["not ended at time limit"] == 0
    assert "| agentstream | sqlite-full |" in markdown(rows)


@pytest.mark.slow
async def test_many_runs_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    args = parse_args(
        ["many-runs", "--system", ",".join(SYSTEMS), "--workdir", str(tmp_path)]
        + ["--runs", "3", "--tool-steps", "2", "--model-latency", "0.05", "--time-limit", "120"]
    )
    rows = await measure(args)
    assert [r.system for r in rows] == SYSTEMS
    for row in rows:
        assert row.values["runs completed"] == "3/3"
        assert row.values["lost or duplicated"] == "none"


@pytest.mark.slow
async def test_step_overhead_completes_every_run_and_skips_what_serve_cannot_do(tmp_path: Path) -> None:
    tiny = ["step-overhead", "--workdir", str(tmp_path), "--steps", "3", "--runs", "3", "--time-limit", "120"]
    [row] = await measure(parse_args(tiny))
    assert row.values["serial run ok"] is True
    assert row.values["runs completed"] == "3/3"

    [two] = await measure(parse_args([*tiny, "--processes", "2"]))
    assert two.values.get("runs completed") == "3/3" or "skipped" in two.values["note"]


def test_markdown_has_a_row_per_measurement_after_the_machine_line() -> None:
    rows = [
        Row("many-runs", "agentstream", "sqlite-full", {"runs completed": "3/3", "wall s": 1.5}),
        Row("many-runs", "langgraph", "sqlite, durability=sync", {"runs completed": "3/3", "wall s": 0.5}),
    ]
    lines = markdown(rows).splitlines()
    assert lines[0].startswith("**Machine:**")
    assert "| agentstream | sqlite-full | 3/3 | 1.50 |" in lines
    assert "| langgraph | sqlite, durability=sync | 3/3 | 0.50 |" in lines
