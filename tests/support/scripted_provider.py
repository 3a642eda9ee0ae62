"""An OpenAI-compatible server whose replies depend on the conversation, not on a queue.

A planner that crashes after a model call calls the model again on restart; a server
that answers from the conversation gives the same answer both times, which is what a
crash test needs. Each turn it asks for the `side_effect` tool (or the `tool` given, with
`arguments(n)`) until the conversation holds `steps` tool results, then answers.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # hundreds of runs call at once
    daemon_threads = True


class ConversationalProvider:
    """Serves POST /v1/chat/completions on 127.0.0.1 in a thread."""

    def __init__(
        self,
        steps: int = 3,
        tool: str = "side_effect",
        arguments: Callable[[int], dict[str, Any]] = lambda n: {"n": n},
        hold_models: frozenset[str] = frozenset(),
        latency_s: float = 0.0,
    ) -> None:
        """Requests for a model in `hold_models` wait until `release` is set: a model call
        that takes as long as the test wants. Every reply takes at least `latency_s`."""
        self.steps = steps
        self.latency_s = latency_s
        self.in_flight = 0
        self.max_in_flight = 0
        self.hold_models = hold_models
        self.release = threading.Event()
        self.held = 0
        self.answered: dict[str, int] = {}
        self._lock = threading.Lock()
        self.tool = tool
        self.arguments = arguments
        self.calls = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                reply = json.dumps(provider.reply(body)).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the caller was killed while it waited: crash tests do that

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def reply(self, body: dict[str, Any]) -> dict[str, Any]:
        model = str(body.get("model", ""))
        with self._lock:
            self.calls += 1
            holding = model in self.hold_models
            self.held += holding
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if holding:
            self.release.wait(120)
            with self._lock:
                self.held -= 1
        if self.latency_s:
            time.sleep(self.latency_s)
        with self._lock:
            self.answered[model] = self.answered.get(model, 0) + 1
            self.in_flight -= 1
        done = sum(1 for m in body["messages"] if m["role"] == "tool")
        message: dict[str, Any] = {"role": "assistant", "content": None}
        if done < self.steps:
            message["tool_calls"] = [
                {
                    "id": f"c{done}",
                    "type": "function",
                    "function": {"name": self.tool, "arguments": json.dumps(self.arguments(done))},
                }
            ]
        else:
            message["content"] = f"done after {done} effects"
        return {
            "id": "chatcmpl-x",
            "object": "chat.completion",
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
