"""Local stand-ins for model providers, so tests never call a paid LLM.

:class:`ProviderServer` is a real HTTP server on 127.0.0.1 (an ephemeral port, served
from a background thread) that answers OpenAI Chat Completions
(``POST /v1/chat/completions``) and Anthropic Messages (``POST /v1/messages``)
requests from a script of :class:`Reply` objects, in order, and records every request
it receives so tests can assert on the exact wire JSON. Because it is a real socket,
the adapters' real httpx path runs end to end.

Use ``server.openai_base_url`` / ``server.anthropic_base_url`` as the adapters'
``base_url``. The reply builders (:func:`openai_reply`, :func:`anthropic_reply`,
:func:`openai_error`, :func:`anthropic_error`) produce provider-shaped bodies, and
:class:`SleepRecorder` replaces ``asyncio.sleep`` in retry tests.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/v1/messages"


@dataclass(frozen=True)
class Reply:
    """One scripted HTTP answer: status, JSON body (or raw text), headers, delay."""

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    """Seconds to wait before answering (to provoke client timeouts)."""


@dataclass(frozen=True)
class RecordedRequest:
    """A request as the server saw it; header names are lower-cased."""

    method: str
    path: str
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        """The decoded JSON body."""
        return json.loads(self.raw)


class ProviderServer:
    """A scripted OpenAI + Anthropic wire-format server on loopback (context manager)."""

    def __init__(self) -> None:
        self._replies: deque[Reply] = deque()
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(
            # A short poll keeps shutdown (and so each test's teardown) fast.
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="provider-server",
            daemon=True,
        )

    # -- lifecycle
    def start(self) -> Self:
        """Start serving in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port; delayed replies are abandoned."""
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses
    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def openai_base_url(self) -> str:
        """Base URL for the OpenAI adapter (it appends ``/chat/completions``)."""
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """Base URL for the Anthropic adapter (it appends ``/v1/messages``)."""
        return self.url

    # -- script and record
    def script(self, *replies: Reply) -> None:
        """Queue replies; each request consumes the next one."""
        with self._lock:
            self._replies.extend(replies)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def pending(self) -> int:
        """Scripted replies not yet consumed."""
        with self._lock:
            return len(self._replies)

    def _next(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self._requests.append(request)
            if request.method != "POST" or request.path not in (
                OPENAI_PATH,
                ANTHROPIC_PATH,
            ):
                return Reply(404, {"error": {"type": "not_found", "message": request.path}})
            if not self._replies:
                # 400 rather than 5xx so a retrying client fails fast and visibly.
                return Reply(
                    400,
                    {"error": {"type": "test_script", "message": "no reply scripted"}},
                )
            return self._replies.popleft()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self._answer()

            def do_GET(self) -> None:
                self._answer()

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                recorded = RecordedRequest(
                    method=self.command,
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    raw=raw,
                )
                reply = server._next(recorded)
                if reply.delay and server._stopping.wait(reply.delay):
                    return
                if isinstance(reply.body, str | bytes):
                    payload = reply.body.encode() if isinstance(reply.body, str) else reply.body
                    content_type = "text/plain"
                else:
                    payload = json.dumps(reply.body).encode()
                    content_type = "application/json"
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", content_type)
                    self.send_header("content-length", str(len(payload)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


class SleepRecorder:
    """Stands in for ``asyncio.sleep``: records each requested delay, waits for none."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


# --------------------------------------------------------------------------- OpenAI


def openai_reply(
    text: str | None = None,
    tool_calls: Iterable[tuple[str, str, str | Mapping[str, Any]]] = (),
    *,
    model: str = "gpt-4o-mini-2024-07-18",
    finish_reason: str | None = None,
    prompt_tokens: int = 10,
    completion_tokens: int = 5,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """A Chat Completions 200 reply; tool calls are ``(id, name, arguments)``.

    Arguments given as a mapping are JSON-encoded; a string is sent verbatim (so tests
    can send malformed JSON).
    """
    calls = [
        {
            "id": call_id,
            "type": "function",
            "function": {
                "name": name,
                "arguments": args if isinstance(args, str) else json.dumps(args),
            },
        }
        for call_id, name, args in tool_calls
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    body = {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": finish_reason or ("tool_calls" if calls else "stop"),
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    return Reply(200, body, dict(headers or {}))


def openai_error(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """An OpenAI-shaped error reply."""
    body = {"error": {"message": message, "type": type_, "param": None, "code": None}}
    return Reply(status, body, dict(headers or {}))


# --------------------------------------------------------------------------- Anthropic


def anthropic_reply(
    text: str | None = None,
    tool_uses: Iterable[tuple[str, str, Any]] = (),
    *,
    model: str = "claude-sonnet-4-5-20250929",
    stop_reason: str | None = None,
    input_tokens: int = 10,
    output_tokens: int = 5,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """A Messages 200 reply; tool uses are ``(id, name, input)``."""
    content: list[dict[str, Any]] = []
    if text is not None:
        content.append({"type": "text", "text": text})
    uses = list(tool_uses)
    content.extend(
        {"type": "tool_use", "id": use_id, "name": name, "input": input_} for use_id, name, input_ in uses
    )
    body = {
        "id": "msg_test",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason or ("tool_use" if uses else "end_turn"),
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }
    return Reply(200, body, dict(headers or {}))


def anthropic_error(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """An Anthropic-shaped error reply."""
    body = {"type": "error", "error": {"type": type_, "message": message}}
    return Reply(status, body, dict(headers or {}))
