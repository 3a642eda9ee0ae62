"""Test doubles for the tool tests: a loopback HTTP server, a connection trap, a guarded
transport and a scripted resolver.

Every byte these tests send goes to 127.0.0.1 (or ::1). The guarded transport refuses to
carry a request anywhere else, so even a broken egress check cannot reach another host.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

from handlers.tools.base import ToolContext
from handlers.tools.egress import NetworkPolicy

PAGE = """<!doctype html>
<html><head><title>Test &amp; Page</title>
<style>body { color: red; }</style>
<script>var secret = "do-not-show"; if (1 < 2) { alert("x"); }</script>
</head>
<body>
<h1>Hello&nbsp;world</h1>
<p>First   paragraph
   spans lines. <a href="/about">About us</a> and <a href="https://example.org/x">more</a>.</p>
<noscript>enable javascript</noscript>
<ul><li>one</li><li>two</li></ul>
<p>hidden\u202eevil\u200b text</p>
<a href="javascript:alert(1)">bad link</a>
</body></html>
"""


class LoopbackServer(ThreadingHTTPServer):
    """A threaded HTTP server on 127.0.0.1 that records what it was asked."""

    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.paths: list[str] = []
        self.hosts: list[str | None] = []
        self.release = threading.Event()
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        return thread

    def stop(self, thread: threading.Thread) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()
        thread.join(5)

    def record(self, path: str, host: str | None) -> None:
        with self._lock:
            self.paths.append(path)
            self.hosts.append(host)


class _Handler(BaseHTTPRequestHandler):
    server: LoopbackServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str, status: int = 302) -> None:
        self.send_response(status)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self.server.record(self.path, self.headers.get("Host"))
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        route = parts.path
        if route == "/page":
            self._send(200, "text/html; charset=utf-8", PAGE.encode())
        elif route == "/json":
            self._send(200, "application/json", b'{"b": [1, 2], "a": "\\u00e9"}')
        elif route == "/text":
            self._send(200, "text/plain; charset=latin-1", "caf\xe9\x07 ok".encode("latin-1"))
        elif route == "/binary":
            self._send(200, "application/octet-stream", bytes(range(256)) * 4)
        elif route in ("/untyped", "/untyped-binary"):
            body = b"plain words" if route == "/untyped" else b"\x00\x01\x02 blob"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif route == "/echo-host":
            self._send(200, "text/plain", (self.headers.get("Host") or "").encode())
        elif route == "/missing":
            self._send(404, "text/plain", b"no such page")
        elif route == "/big":
            # No Content-Length: the body runs until the client hangs up (bounded at 50 MiB).
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            chunk = b"a" * 65536
            try:
                for _ in range(800):
                    self.wfile.write(chunk)
            except OSError:
                pass
        elif route == "/slow":
            self.server.release.wait(10)
            self._send(200, "text/plain", b"finally")
        elif route == "/redirect":
            self._redirect(query["to"][0])
        elif route == "/chain":
            self._redirect("/page", status=301)
        elif route == "/loop":
            n = int(query.get("n", ["0"])[0])
            self._redirect(f"/loop?n={n + 1}")
        else:
            self._send(404, "text/plain", b"unknown route")


class ConnectionTrap:
    """A listening socket nobody accepts on: any connection attempt stays in its backlog."""

    def __init__(self, family: socket.AddressFamily, host: str) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.port: int = self.sock.getsockname()[1]

    def attempts(self) -> int:
        """How many connections reached the socket (drains the backlog)."""
        self.sock.setblocking(False)
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1

    def close(self) -> None:
        self.sock.close()


class NonLoopbackRequestError(AssertionError):
    """A test tried to send a request somewhere other than loopback."""


class LoopbackOnlyTransport(httpx.AsyncBaseTransport):
    """Forwards requests to 127.0.0.1 / ::1 and records every request it is handed."""

    def __init__(self, verify: ssl.SSLContext | bool = True) -> None:
        self._inner = httpx.AsyncHTTPTransport(retries=0, verify=verify)
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.host not in ("127.0.0.1", "::1"):
            raise NonLoopbackRequestError(f"refusing to send a request to {request.url}")
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass
class FakeResolver:
    """Maps names to fixed answers (one answer list per call, the last one repeating)."""

    answers: dict[str, list[list[str]]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def add(self, name: str, *answers: Sequence[str]) -> FakeResolver:
        self.answers[name] = [list(a) for a in answers]
        return self

    async def __call__(self, host: str) -> Sequence[str]:
        self.calls.append(host)
        queue = self.answers.get(host)
        if not queue:
            raise socket.gaierror(socket.EAI_NONAME, f"fake resolver has no answer for {host}")
        return queue.pop(0) if len(queue) > 1 else queue[0]


@dataclass(frozen=True)
class TlsFiles:
    """A self-signed certificate (its own CA) and key for one DNS name."""

    name: str
    cert: Path
    key: Path


def make_ctx(network: NetworkPolicy | None = None) -> ToolContext:
    """A call context for tests; the default network policy reaches nothing."""
    return ToolContext(
        run_id="run-1",
        tenant_id="tenant-a",
        tool_call_id="call-1",
        idempotency_key="0" * 64,
        network=network or NetworkPolicy(),
    )
