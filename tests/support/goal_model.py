"""An OpenAI-compatible model stand-in whose replies follow from the run's goal.

Many runs of many tenants share one server, in any order, so replies cannot come from a
queue: each request is answered from its own conversation. The goal (the first user
message) picks the script:

- `call <tool> <json arguments>`: one call of that tool, then an answer quoting its result;
- anything else: the answer `done: <goal>` straight away.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


def reply_to(body: dict[str, Any]) -> dict[str, Any]:
    messages = body["messages"]
    goal = next((m["content"] for m in messages if m["role"] == "user"), "") or ""
    if isinstance(goal, list):
        goal = " ".join(part.get("text", "") for part in goal)
    results = [m["content"] for m in messages if m["role"] == "tool"]
    message: dict[str, Any] = {"role": "assistant", "content": None}
    marker = goal.find("call ")
    if results:
        message["content"] = f"finished: {results[-1]}"
    elif marker >= 0:
        tool, _, arguments = goal[marker + 5 :].strip().partition(" ")
        message["content"] = f"I will use {tool}."
        message["tool_calls"] = [
            {"id": "c1", "type": "function", "function": {"name": tool, "arguments": arguments or "{}"}}
        ]
    else:
        message["content"] = f"done: {goal}"
    return {
        "id": "chatcmpl-goal",
        "object": "chat.completion",
        "model": body.get("model", "gpt-4o-mini"),
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30},
    }


class GoalModel:
    """Serves POST /v1/chat/completions on 127.0.0.1 from a thread (context manager)."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                data = json.dumps(reply_to(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

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
