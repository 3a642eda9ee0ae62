"""The calculator tool: correct arithmetic, and a clear refusal for everything else."""

from __future__ import annotations

import math
import time

import pytest

from handlers.tools.base import ToolError
from handlers.tools.calculator import CalculatorTool, evaluate
from tests.unit.tools.fakes import make_ctx

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("7 - 10", -3),
        ("7 / 2", 3.5),
        ("7 // 2", 3),
        ("-7 // 2", -4),
        ("7 % 3", 1),
        ("2 ** 10", 1024),
        ("2 ** -1", 0.5),
        ("2.5 ** 2", 6.25),
        ("-3 ** 2", -9),
        ("(-3) ** 2", 9),
        ("+4", 4),
        ("--4", 4),
        ("0.1 + 0.2", 0.1 + 0.2),
        ("1e3", 1000.0),
        ("  1 + 1  ", 2),
        ("sqrt(16)", 4.0),
        ("log(e)", 1.0),
        ("log(8, 2)", 3.0),
        ("log10(1000)", 3.0),
        ("exp(0)", 1.0),
        ("sin(0)", 0.0),
        ("cos(pi)", -1.0),
        ("abs(-3)", 3),
        ("round(2.567, 2)", 2.57),
        ("round(2.5)", 2),
        ("floor(2.7) + ceil(2.1)", 5),
        ("min(3, 1, 2)", 1),
        ("max(1.5, 2)", 2),
        ("pi", math.pi),
        ("2 ** 1000 // 2 ** 999", 2),
        ("10 ** 300", 10**300),
        ("+".join(["1"] * 90), 90),
        ("max(" + ",".join(["1"] * 300) + ")", 1),
    ],
)
def test_evaluates(expression: str, expected: float) -> None:
    result = evaluate(expression)
    assert result == pytest.approx(expected)
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("1 / 0", "division by zero"),
        ("1 // 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("1.5 % 0.0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("log(1, 1)", "division by zero"),
        ("x + 1", "unknown name 'x'"),
        ("__import__('os')", "unknown function '__import__'"),
        ("foo(1)", "unknown function 'foo'"),
        ("sqrt", "'sqrt' is a function"),
        ("1 +", "syntax error"),
        ("(1 + 2", "syntax error"),
        ("1 + 1; 2", "syntax error"),
        ("", "expression is empty"),
        ("   ", "expression is empty"),
        ("'a' * 3", "str values are not allowed"),
        ("True + 1", "bool values are not allowed"),
        ("1j", "complex numbers are not allowed"),
        ("(1).real", "attribute access"),
        ("[1, 2][0]", "unsupported syntax"),
        ("1 < 2", "comparisons"),
        ("1 and 2", "boolean operators"),
        ("lambda: 1", "lambda"),
        ("1 if 1 else 2", "conditional expressions"),
        ("~1", "unsupported operator Invert"),
        ("1 << 3", "unsupported operator LShift"),
        ("1 & 3", "unsupported operator BitAnd"),
        ("sqrt(x=4)", "only plain positional arguments"),
        ("max(*[1, 2])", "only plain positional arguments"),
        ("sqrt(1, 2)", "expected 1 argument(s), got 2"),
        ("min()", "expected 1 or more argument(s), got 0"),
        ("(lambda: 1)()", "only the built-in math functions can be called"),
        ("abs.__call__(1)", "only the built-in math functions can be called"),
        ("sqrt(-1)", "sqrt: math domain error"),
        ("log(0)", "log: math domain error"),
        ("(-8) ** (1 / 3)", "not a real number"),
        ("round(1.5, 0.5)", "ndigits must be an integer"),
        ("round(1, -1000)", "ndigits must be between"),
    ],
)
def test_refuses_with_a_clear_message(expression: str, message: str) -> None:
    with pytest.raises(ToolError) as info:
        evaluate(expression)
    assert message in info.value.message
    assert info.value.retryable is False


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("9 ** 9 ** 9", "exponent too large"),
        ("10 ** 100000", "exponent too large"),
        ("2 ** 1025", "too large"),
        ("(10 ** 300) ** 4", "exponent too large"),
        ("(10 ** 200) * (10 ** 200)", "too large"),
        ("2.0 ** 100000", "overflow"),
        ("1e308 * 10", "overflow"),
        ("1e400", "overflow"),
        ("exp(1000)", "overflow"),
        ("10 ** 300 / 10 ** -300", "overflow"),
        ("1" * 400, "too large"),
        ("1 + " * 400 + "1", "too long"),
        ("-" * 150 + "1", "nested too deeply"),
        ("+".join(["1"] * 200), "nested too deeply"),
        ("(" * 300 + "1" + ")" * 300, "syntax error"),
        ("max(" + ",".join(["1"] * 450) + ")", "too complex"),
    ],
)
def test_resource_bombs_are_refused_quickly(expression: str, message: str) -> None:
    start = time.monotonic()
    with pytest.raises(ToolError) as info:
        evaluate(expression)
    assert message in info.value.message
    assert time.monotonic() - start < 1.0


def test_spec_is_low_risk_idempotent_and_retryable() -> None:
    spec = CalculatorTool().spec
    assert spec.name == "calculator"
    assert spec.risk_tier == "low"
    assert spec.idempotent and spec.safe_to_retry
    assert spec.attempts == spec.max_attempts >= 2
    assert spec.parameters["required"] == ["expression"]


@pytest.mark.asyncio
async def test_run_returns_result() -> None:
    result = await CalculatorTool().run({"expression": "(2 + 3) * sqrt(16) / 4"}, make_ctx())
    assert result.ok and result.error is None
    assert result.data == {"expression": "(2 + 3) * sqrt(16) / 4", "result": 5.0}


@pytest.mark.asyncio
async def test_run_raises_tool_error_for_bad_input() -> None:
    with pytest.raises(ToolError, match="division by zero"):
        await CalculatorTool().run({"expression": "1/0"}, make_ctx())
    with pytest.raises(ToolError, match="must be a string"):
        await CalculatorTool().run({"expression": 42}, make_ctx())
