"""The ``calculator`` tool: arithmetic on an expression string, evaluated safely.

The expression is parsed with :mod:`ast` and walked by a small interpreter that knows
numbers, ``+ - * / // % **``, unary ``+``/``-``, parentheses, and a fixed set of math
functions and constants. Nothing is ever passed to ``eval``. Inputs that could burn CPU
or memory (long text, deep nesting, many nodes, huge integers or exponents) are refused
with a clear message before the expensive step runs.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

from handlers.tools.base import Tool, ToolContext, ToolError, ToolResult, ToolSpec

__all__ = ["CalculatorTool", "evaluate"]

Number = int | float

MAX_EXPRESSION_CHARS = 1000
MAX_NODES = 400
MAX_DEPTH = 100
MAX_INT_BITS = 1024
"""Integers beyond this many bits (about 308 decimal digits) are refused."""
MAX_ROUND_DIGITS = 100

CONSTANTS: Mapping[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _real(value: object, fn: str) -> Number:
    if isinstance(value, complex):
        raise ToolError(f"{fn}: result is not a real number")
    if isinstance(value, (int, float)):
        return value
    raise ToolError(f"{fn}: unexpected result type")


def _fn_sqrt(x: Number) -> Number:
    return math.sqrt(x)


def _fn_log(x: Number, base: Number | None = None) -> Number:
    return math.log(x) if base is None else math.log(x, base)


def _fn_round(x: Number, ndigits: Number | None = None) -> Number:
    if ndigits is None:
        return round(x)
    if not isinstance(ndigits, int):
        raise ToolError("round: ndigits must be an integer")
    if abs(ndigits) > MAX_ROUND_DIGITS:
        # round(int, -n) computes 10**n internally.
        raise ToolError(f"round: ndigits must be between -{MAX_ROUND_DIGITS} and {MAX_ROUND_DIGITS}")
    return round(x, ndigits)


def _fn_min(*xs: Number) -> Number:
    return min(xs)


def _fn_max(*xs: Number) -> Number:
    return max(xs)


# name -> (function, minimum arity, maximum arity or None for variadic)
FUNCTIONS: Mapping[str, tuple[Callable[..., Number], int, int | None]] = {
    "sqrt": (_fn_sqrt, 1, 1),
    "log": (_fn_log, 1, 2),
    "log10": (math.log10, 1, 1),
    "log2": (math.log2, 1, 1),
    "exp": (math.exp, 1, 1),
    "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1),
    "tan": (math.tan, 1, 1),
    "abs": (abs, 1, 1),
    "round": (_fn_round, 1, 2),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
    "min": (_fn_min, 1, None),
    "max": (_fn_max, 1, None),
}


def _check_size(value: Number) -> Number:
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("result is too large (overflow)")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ToolError(f"result is too large (more than {MAX_INT_BITS} bits)")
    return value


def _pow(base: Number, exp: Number) -> Number:
    if isinstance(base, int) and isinstance(exp, int) and exp >= 0:
        # Estimate the result size before computing it: 9**9**9 would take minutes.
        if abs(base) > 1 and (abs(base).bit_length() - 1) * exp > MAX_INT_BITS:
            raise ToolError(f"exponent too large: result would exceed {MAX_INT_BITS} bits")
        return int(base**exp)
    if base == 0 and exp < 0:
        raise ToolError("division by zero (zero raised to a negative power)")
    # math.pow refuses what ** would turn into a complex number, and raises on overflow.
    try:
        return math.pow(base, exp)
    except ValueError:
        raise ToolError("result is not a real number (negative base, fractional exponent)") from None


def _mul(a: Number, b: Number) -> Number:
    if isinstance(a, int) and isinstance(b, int) and a.bit_length() + b.bit_length() > MAX_INT_BITS + 1:
        raise ToolError(f"result is too large (more than {MAX_INT_BITS} bits)")
    return a * b


_BINARY: Mapping[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: _mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: _pow,
}

_UNARY: Mapping[type[ast.unaryop], Callable[[Number], Number]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}


def _syntax_name(node: ast.AST) -> str:
    names = {
        ast.Attribute: "attribute access",
        ast.Subscript: "subscripts",
        ast.Compare: "comparisons",
        ast.BoolOp: "boolean operators",
        ast.Lambda: "lambda",
        ast.IfExp: "conditional expressions",
        ast.NamedExpr: "assignment expressions",
    }
    for kind, label in names.items():
        if isinstance(node, kind):
            return label
    return type(node).__name__


def _check_shape(tree: ast.Expression) -> None:
    """Refuse trees that are too big or too deep before evaluating them recursively."""
    count = 0
    stack: list[tuple[ast.AST, int]] = [(tree.body, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise ToolError(f"expression is too complex (more than {MAX_NODES} elements)")
        if depth > MAX_DEPTH:
            raise ToolError(f"expression is nested too deeply (more than {MAX_DEPTH} levels)")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            kind = "complex numbers" if isinstance(value, complex) else f"{type(value).__name__} values"
            raise ToolError(f"unsupported value {value!r}: {kind} are not allowed")
        return _check_size(value)
    if isinstance(node, ast.BinOp):
        binary = _BINARY.get(type(node.op))
        if binary is None:
            raise ToolError(f"unsupported operator {type(node.op).__name__}")
        left, right = _eval(node.left), _eval(node.right)
        return _check_size(binary(left, right))
    if isinstance(node, ast.UnaryOp):
        unary = _UNARY.get(type(node.op))
        if unary is None:
            raise ToolError(f"unsupported operator {type(node.op).__name__}")
        return _check_size(unary(_eval(node.operand)))
    if isinstance(node, ast.Name):
        if node.id in CONSTANTS:
            return CONSTANTS[node.id]
        if node.id in FUNCTIONS:
            raise ToolError(f"{node.id!r} is a function; call it like {node.id}(...)")
        raise ToolError(f"unknown name {node.id!r}")
    if isinstance(node, ast.Call):
        return _call(node)
    raise ToolError(f"unsupported syntax: {_syntax_name(node)}")


def _call(node: ast.Call) -> Number:
    if not isinstance(node.func, ast.Name):
        raise ToolError("only the built-in math functions can be called")
    name = node.func.id
    entry = FUNCTIONS.get(name)
    if entry is None:
        raise ToolError(f"unknown function {name!r}")
    if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
        raise ToolError(f"{name}: only plain positional arguments are allowed")
    fn, lo, hi = entry
    if len(node.args) < lo or (hi is not None and len(node.args) > hi):
        want = str(lo) if lo == hi else f"{lo} or more" if hi is None else f"{lo} to {hi}"
        raise ToolError(f"{name}: expected {want} argument(s), got {len(node.args)}")
    args = [_eval(a) for a in node.args]
    try:
        result: Any = fn(*args)
    except ValueError as exc:
        raise ToolError(f"{name}: {exc}") from None
    return _check_size(_real(result, name))


def evaluate(expression: str) -> Number:
    """Evaluate an arithmetic expression; raises :class:`ToolError` with the reason."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression is too long (more than {MAX_EXPRESSION_CHARS} characters)")
    if not expression.strip():
        raise ToolError("expression is empty")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        where = f" at column {exc.offset}" if exc.offset else ""
        raise ToolError(f"syntax error{where}: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError):
        raise ToolError("expression could not be parsed") from None
    _check_shape(tree)
    try:
        return _eval(tree.body)
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except OverflowError:
        raise ToolError("result is too large (overflow)") from None


class CalculatorTool(Tool):
    """Evaluates an arithmetic expression; pure, so idempotent and safe to retry."""

    SPEC = ToolSpec(
        name="calculator",
        description=(
            "Evaluate an arithmetic expression exactly once and return the number. "
            "Supports + - * / // % ** and parentheses, integers and decimals, the "
            "functions sqrt, log (optional base), log10, log2, exp, sin, cos, tan, abs, "
            "round, floor, ceil, min, max, and the constants pi, e, tau."
        ),
        parameters={
            "type": "object",
            "properties": {
                "expression": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_EXPRESSION_CHARS,
                    "description": "For example: (2 + 3) * sqrt(16) / 4",
                }
            },
            "required": ["expression"],
            "additionalProperties": False,
        },
        risk_tier="low",
        timeout_s=2.0,
        max_attempts=2,
        safe_to_retry=True,
        idempotent=True,
    )

    @property
    def spec(self) -> ToolSpec:
        return self.SPEC

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolResult:
        expression = args.get("expression")
        if not isinstance(expression, str):
            raise ToolError("argument 'expression' must be a string")
        result = evaluate(expression)
        return ToolResult.success({"expression": expression, "result": result})
