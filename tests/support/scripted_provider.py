"""An OpenAI-compatible server whose replies depend on the conversation, not on a queue.

A planner that crashes after a model call calls the model again on restart; a server
that answers from the conversation gives the same answer both times, which is what a
crash test needs. Each turn it asks for the `side_effect` tool (or the `tool` given, with
`arguments(n)`) until the conversation holds `steps` tool results, then answers.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class ConversationalProvider:
    """Serves POST /v1/chat/completions on 127.0.0.1 in a thread."""

    def __init__(
        self,
        steps: int = 3,
        tool: str = "side_effect",
        arguments: Callable[[int], dict[str, Any]] = lambda n: {"n": n},
    ) -> None:
        self.steps = steps
        self.tool = tool
        self.arguments = arguments
        self.calls = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                reply = json.dumps(provider.reply(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def reply(self, body: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
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
