"""The http_fetch tool against a real HTTP server on 127.0.0.1.

Blocked destinations must be refused before any connection: the guarded transport counts
every request it is handed, and a listening socket nobody accepts on (the trap) counts
every TCP connection that reaches it, so "zero" is observed, not assumed.
"""

from __future__ import annotations

import ssl
import time

import pytest

from handlers.tools.base import ToolError, ToolResult
from handlers.tools.egress import NetworkPolicy
from handlers.tools.http_fetch import HttpFetchTool
from tests.unit.tools.fakes import (
    ConnectionTrap,
    FakeResolver,
    LoopbackOnlyTransport,
    LoopbackServer,
    TlsFiles,
    make_ctx,
)

pytestmark = [pytest.mark.unit, pytest.mark.asyncio]

LOOPBACK = NetworkPolicy(allowed_hosts=("127.0.0.1",), allow_loopback=True)


def _tool(
    transport: LoopbackOnlyTransport,
    resolver: FakeResolver | None = None,
    *,
    max_bytes: int = 1_000_000,
    max_redirects: int = 5,
    timeout_s: float = 5.0,
) -> HttpFetchTool:
    return HttpFetchTool(
        resolver=resolver or FakeResolver(),
        transport=transport,
        max_bytes=max_bytes,
        max_redirects=max_redirects,
        timeout_s=timeout_s,
    )


async def _fetch(tool: HttpFetchTool, url: str, network: NetworkPolicy = LOOPBACK) -> ToolResult:
    return await tool.run({"url": url}, make_ctx(network))


# --------------------------------------------------------------------------- fetching


async def test_html_is_reduced_to_readable_text(
    server: LoopbackServer, transport: LoopbackOnlyTransport
) -> None:
    result = await _fetch(_tool(transport), server.url("/page"))
    assert result.ok, result.error
    data = result.data
    assert isinstance(data, dict)
    assert data["status"] == 200
    assert data["content_type"] == "text/html"
    assert data["title"] == "Test & Page"
    assert data["truncated"] is False
    text = data["text"]
    assert isinstance(text, str)
    assert "Hello\xa0world" in text
    assert "First paragraph spans lines." in text
    assert f"About us [http://127.0.0.1:{server.port}/about]" in text
    assert "more [https://example.org/x]" in text
    assert "- one\n" in text and "- two" in text
    assert "hiddenevil text" in text  # bidi override and zero-width space removed
    assert "bad link" in text and "javascript:" not in text
    for hidden in ("do-not-show", "alert", "color: red", "enable javascript", "<"):
        assert hidden not in text
    assert server.hosts == [f"127.0.0.1:{server.port}"]


async def test_json_and_text_pass_through(server: LoopbackServer, transport: LoopbackOnlyTransport) -> None:
    tool = _tool(transport)
    result = await _fetch(tool, server.url("/json"))
    assert result.ok and isinstance(result.data, dict)
    assert result.data["text"] == '{"b": [1, 2], "a": "\\u00e9"}'
    assert result.data["content_type"] == "application/json"

    result = await _fetch(tool, server.url("/text"))
    assert result.ok and isinstance(result.data, dict)
    assert result.data["text"] == "caf\xe9 ok"  # latin-1 decoded, BEL control removed


async def test_other_content_is_summarized_not_returned(
    server: LoopbackServer, transport: LoopbackOnlyTransport
) -> None:
    result = await _fetch(_tool(transport), server.url("/binary"))
    assert result.ok and isinstance(result.data, dict)
    assert result.data["text"] is None
    assert result.data["summary"] == "application/octet-stream content (1024 bytes), not shown"


async def test_content_without_a_type_is_sniffed(
    server: LoopbackServer, transport: LoopbackOnlyTransport
) -> None:
    tool = _tool(transport)
    result = await _fetch(tool, server.url("/untyped"))
    assert result.ok and isinstance(result.data, dict)
    assert result.data["content_type"] is None
    assert result.data["text"] == "plain words"

    result = await _fetch(tool, server.url("/untyped-binary"))
    assert result.ok and isinstance(result.data, dict)
    assert result.data["text"] is None
    assert result.data["summary"] == "binary content (8 bytes), not shown"


async def test_http_errors_are_failed_results_with_detail(
    server: LoopbackServer, transport: LoopbackOnlyTransport
) -> None:
    result = await _fetch(_tool(transport), server.url("/missing"))
    assert not result.ok
    assert result.error == "HTTP 404 Not Found"
    assert isinstance(result.data, dict)
    assert result.data["status"] == 404 and result.data["text"] == "no such page"


async def test_response_size_is_capped_while_streaming(
    server: LoopbackServer, transport: LoopbackOnlyTransport
) -> None:
    start = time.monotonic()
    result = await _fetch(_tool(transport, max_bytes=10_000), server.url("/big"))
    assert time.monotonic() - start < 5
    assert result.ok and isinstance(result.data, dict)
    assert result.data["truncated"] is True
    assert result.data["bytes"] == 10_000
    assert result.data["text"] == "a" * 10_000


async def test_redirects_are_followed_and_reported(
    server: LoopbackServer, transport: LoopbackOnlyTransport
) -> None:
    result = await _fetch(_tool(transport), server.url("/chain"))
    assert result.ok and isinstance(result.data, dict)
    assert result.data["url"] == server.url("/page")
    assert result.data["redirects"] == [server.url("/chain")]
    assert result.data["title"] == "Test & Page"


async def test_redirect_limit(server: LoopbackServer, transport: LoopbackOnlyTransport) -> None:
    with pytest.raises(ToolError, match=r"too many redirects \(more than 3\)") as info:
        await _fetch(_tool(transport, max_redirects=3), server.url("/loop"))
    assert info.value.retryable is False
    assert server.paths == ["/loop", "/loop?n=1", "/loop?n=2", "/loop?n=3"]


async def test_total_time_is_bounded(server: LoopbackServer, transport: LoopbackOnlyTransport) -> None:
    start = time.monotonic()
    with pytest.raises(ToolError, match="timed out") as info:
        await _fetch(_tool(transport, timeout_s=0.5), server.url("/slow"))
    assert time.monotonic() - start < 3
    assert info.value.retryable is True


async def test_connection_refused_is_retryable(
    trap: ConnectionTrap, transport: LoopbackOnlyTransport
) -> None:
    port = trap.port
    trap.close()  # nothing listens there any more
    with pytest.raises(ToolError, match="network error") as info:
        await _fetch(_tool(transport), f"http://127.0.0.1:{port}/")
    assert info.value.retryable is True


async def test_connects_to_the_vetted_address_with_the_original_host(
    server: LoopbackServer, transport: LoopbackOnlyTransport
) -> None:
    # A rebinding resolver: the first answer passes the check, later ones would not.
    resolver = FakeResolver().add("pinned.test", ["127.0.0.1"], ["10.0.0.5"])
    network = NetworkPolicy(allowed_hosts=("pinned.test",), allow_loopback=True)
    result = await _fetch(
        _tool(transport, resolver),
        f"http://pinned.test:{server.port}/echo-host",
        network,
    )
    assert result.ok and isinstance(result.data, dict)
    assert result.data["text"] == f"pinned.test:{server.port}"
    assert result.data["url"] == f"http://pinned.test:{server.port}/echo-host"
    assert resolver.calls == ["pinned.test"]  # resolved once, never again for the connect
    assert [str(r.url) for r in transport.requests] == [f"http://127.0.0.1:{server.port}/echo-host"]
    assert transport.requests[0].headers["host"] == f"pinned.test:{server.port}"


async def test_unresolvable_host_is_a_retryable_error(
    transport: LoopbackOnlyTransport,
) -> None:
    network = NetworkPolicy(allowed_hosts=("nowhere.test",))
    with pytest.raises(ToolError, match="could not resolve") as info:
        await _fetch(_tool(transport), "http://nowhere.test/", network)
    assert info.value.retryable is True
    assert transport.requests == []


# --------------------------------------------------------------------------- refusals


BLOCKED_FORMS = [
    "127.0.0.1",
    "[::ffff:127.0.0.1]",
    "0x7f000001",
    "2130706433",
    "0177.0.0.1",
    "127.1",
    "127.0.0.1.",
    "localhost",
]


@pytest.mark.parametrize("host", BLOCKED_FORMS)
async def test_loopback_in_any_spelling_is_refused_before_connecting(
    host: str, trap: ConnectionTrap, transport: LoopbackOnlyTransport
) -> None:
    # Allowlisted by name, but loopback is not opened: the address class decides.
    network = NetworkPolicy(allowed_hosts=("127.0.0.1", "localhost"))
    resolver = FakeResolver()
    with pytest.raises(ToolError, match=r"blocked by egress policy: .*loopback") as info:
        await _fetch(_tool(transport, resolver), f"http://{host}:{trap.port}/", network)
    assert info.value.retryable is False
    assert transport.requests == []
    assert resolver.calls == []
    assert trap.attempts() == 0


@pytest.mark.parametrize("host", BLOCKED_FORMS)
async def test_unlisted_hosts_are_refused_before_connecting(
    host: str, trap: ConnectionTrap, transport: LoopbackOnlyTransport
) -> None:
    # Loopback opened, but nothing allowlisted: deny by default.
    for network in (NetworkPolicy(allow_loopback=True), NetworkPolicy()):
        with pytest.raises(ToolError, match="not on the egress allowlist"):
            await _fetch(_tool(transport), f"http://{host}:{trap.port}/", network)
    assert transport.requests == []
    assert trap.attempts() == 0


async def test_sanity_the_trap_does_see_connections(
    trap: ConnectionTrap, transport: LoopbackOnlyTransport
) -> None:
    """If the tool did connect, the trap would notice: the zero counts above mean something."""
    with pytest.raises(ToolError, match="timed out"):
        await _fetch(_tool(transport, timeout_s=0.3), f"http://127.0.0.1:{trap.port}/")
    assert len(transport.requests) == 1
    assert trap.attempts() == 1


async def test_name_resolving_to_private_address_is_refused(
    transport: LoopbackOnlyTransport,
) -> None:
    resolver = FakeResolver().add("intranet.test", ["10.0.0.5"])
    network = NetworkPolicy(allowed_hosts=("intranet.test",))
    with pytest.raises(ToolError, match=r"10\.0\.0\.5 is a private address"):
        await _fetch(_tool(transport, resolver), "http://intranet.test/", network)
    assert resolver.calls == ["intranet.test"]
    assert transport.requests == []


async def test_metadata_is_refused_before_connecting(
    transport: LoopbackOnlyTransport,
) -> None:
    network = NetworkPolicy(allowed_hosts=("*",), allow_private=True, allow_loopback=True)
    with pytest.raises(ToolError, match="cloud metadata endpoint"):
        await _fetch(_tool(transport), "http://169.254.169.254/latest/meta-data/", network)
    assert transport.requests == []


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://[::1]:{trap}/", "'::1' is not on the egress allowlist"),
        ("http://localhost:{trap}/", "'localhost' is not on the egress allowlist"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata endpoint"),
        ("http://0xa9fea9fe/", "cloud metadata endpoint"),
        ("http://intranet.test/", "10.0.0.5 is a private address"),
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
    ],
)
async def test_redirect_to_a_blocked_target_is_refused_before_connecting(
    target: str,
    reason: str,
    server: LoopbackServer,
    trap: ConnectionTrap,
    trap6: ConnectionTrap | None,
    transport: LoopbackOnlyTransport,
) -> None:
    port = trap6.port if trap6 is not None and "[::1]" in target else trap.port
    location = target.format(trap=port)
    resolver = FakeResolver().add("intranet.test", ["10.0.0.5"])
    # 169.254.169.254 is allowlisted on purpose: metadata stays blocked regardless.
    network = NetworkPolicy(
        allowed_hosts=("127.0.0.1", "169.254.169.254", "intranet.test"),
        allow_loopback=True,
    )
    with pytest.raises(ToolError) as info:
        await _fetch(_tool(transport, resolver), server.url(f"/redirect?to={location}"), network)
    assert "blocked by egress policy (redirected from http://127.0.0.1:" in info.value.message
    assert reason in info.value.message
    assert len(server.paths) == 1
    assert len(transport.requests) == 1  # only the first hop, to the test server
    assert trap.attempts() == 0
    if trap6 is not None:
        assert trap6.attempts() == 0


# --------------------------------------------------------------------------- TLS


def _tls_server(tls_files: TlsFiles, sni: list[str | None]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls_files.cert, tls_files.key)

    def remember(sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        sni.append(name)

    ctx.sni_callback = remember
    return ctx


async def test_https_connects_to_the_pinned_address_and_verifies_the_name(tls_files: TlsFiles) -> None:
    sni: list[str | None] = []
    srv = LoopbackServer(tls=_tls_server(tls_files, sni))
    thread = srv.start()
    transport = LoopbackOnlyTransport(verify=ssl.create_default_context(cafile=str(tls_files.cert)))
    resolver = FakeResolver().add("pinned.test", ["127.0.0.1"]).add("other.test", ["127.0.0.1"])
    network = NetworkPolicy(allowed_hosts=("pinned.test", "other.test"), allow_loopback=True)
    tool = _tool(transport, resolver)
    try:
        result = await _fetch(tool, f"https://pinned.test:{srv.port}/echo-host", network)
        assert result.ok and isinstance(result.data, dict)
        assert result.data["text"] == f"pinned.test:{srv.port}"
        assert sni == ["pinned.test"]  # SNI carries the name although the URL sent names the IP
        assert str(transport.requests[0].url) == f"https://127.0.0.1:{srv.port}/echo-host"

        # The same address under a name the certificate does not cover is refused.
        with pytest.raises(ToolError, match="TLS certificate verification failed") as info:
            await _fetch(tool, f"https://other.test:{srv.port}/echo-host", network)
        assert info.value.retryable is False
        assert srv.paths == ["/echo-host"]
    finally:
        await transport.aclose()
        srv.stop(thread)
