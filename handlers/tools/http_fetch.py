"""The ``http_fetch`` tool: GET one URL under the call's egress policy, return readable text.

Every hop is vetted by :class:`~handlers.tools.egress.EgressPolicy` before anything is
sent: the host must be allowlisted and every address it resolves to must be open to the
call. The request then goes to one of exactly those addresses (the URL handed to httpx
names the IP; ``Host`` and TLS SNI/certificate checks use the original name), so a DNS
answer that changes after the check cannot redirect it. Redirects are followed by hand,
each one re-checked. The body is streamed and cut at a byte cap, the whole call is bounded
in time, and the result is reduced to sanitized text: HTML to readable text with link
targets, JSON and other text passed through, anything else only summarized.
"""

from __future__ import annotations

import asyncio
import codecs
import re
import ssl
from collections.abc import Mapping
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from handlers.tools.base import JSONValue, Tool, ToolContext, ToolError, ToolResult, ToolSpec
from handlers.tools.egress import EgressPolicy, IPAddress, Resolver, Target

__all__ = ["HttpFetchTool", "html_to_text", "sanitize_text"]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "agentstream-http-fetch/0.1"
MAX_URL_CHARS = 2048

# C0/C1 controls except tab and newline, plus invisible and bidi-override characters that
# can hide text from a human reviewer while a model still reads it.
_UNSAFE_CHARS = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
)
_SPACES = re.compile(r"[ \t\r\f\v]+")
_BLANK_LINES = re.compile(r"\n{3,}")
# Whitespace inside <pre> is stood in for by private-use characters until the final
# whitespace folding is done, then put back.
_PRE_PROTECT = str.maketrans({" ": "\ue000", "\t": "\ue001", "\n": "\ue002"})
_PRE_RESTORE = str.maketrans({"\ue000": " ", "\ue001": "\t", "\ue002": "\n"})
_PRE_DROP = str.maketrans(dict.fromkeys(("\ue000", "\ue001", "\ue002")))


def sanitize_text(text: str) -> str:
    """Drop control, invisible and bidi-override characters; keep tabs and newlines."""
    return _UNSAFE_CHARS.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


# --------------------------------------------------------------------------- HTML


class _TextExtractor(HTMLParser):
    """Collects the visible text of a page, with link targets after the link text."""

    SKIP = frozenset({"script", "style", "noscript", "template", "svg", "math", "iframe", "object"})
    BLOCK = frozenset(
        {
            "address", "article", "aside", "blockquote", "body", "br", "dd", "details", "div",
            "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3",
            "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section",
            "summary", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul",
        }
    )  # fmt: skip

    def __init__(self, base_url: str) -> None:
        super().__init__(convert_charrefs=True)
        self._base_url = base_url
        self._parts: list[str] = []
        self._title: list[str] = []
        self._links: list[str | None] = []
        self._link_text_start: list[int] = []
        self._skip = 0
        self._pre = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self._skip += 1
            return
        if self._skip:
            return
        if tag == "title":
            self._in_title = True
        elif tag in self.BLOCK:
            self._parts.append("\n")
            if tag == "li":
                self._parts.append("- ")
            elif tag in ("td", "th"):
                self._parts.append(" ")
        if tag == "pre":
            self._pre += 1
        elif tag == "a":
            self._links.append(self._resolve(dict(attrs).get("href")))
            self._link_text_start.append(len(self._parts))
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt and alt.strip():
                self._parts.append(f" [image: {alt.strip()}] ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # <a/> or <svg/> open nothing; treat self-closing forms as void.
        if tag in self.SKIP or tag == "a":
            return
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
            return
        if self._skip:
            return
        if tag == "title":
            self._in_title = False
        elif tag == "pre":
            self._pre = max(0, self._pre - 1)
        elif tag == "a" and self._links:
            href = self._links.pop()
            start = self._link_text_start.pop()
            label = "".join(self._parts[start:]).strip()
            if href and href != label:
                self._parts.append(f" [{href}]")
        if tag in self.BLOCK:
            self._parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._in_title:
            self._title.append(data)
        elif self._pre:
            self._parts.append(data.translate(_PRE_PROTECT))
        else:
            data = data.translate(_PRE_DROP).replace("\n", " ")
            self._parts.append(_SPACES.sub(" ", data))

    def _resolve(self, href: str | None) -> str | None:
        if not href:
            return None
        url = urljoin(self._base_url, href.strip())
        return url if urlsplit(url).scheme in ("http", "https") else None

    @property
    def title(self) -> str | None:
        title = _SPACES.sub(" ", "".join(self._title).replace("\n", " ")).strip()
        return title or None

    @property
    def text(self) -> str:
        lines = (_SPACES.sub(" ", line).strip() for line in "".join(self._parts).split("\n"))
        text = _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
        return text.translate(_PRE_RESTORE)


def html_to_text(html: str, base_url: str) -> tuple[str | None, str]:
    """Reduce an HTML document to ``(title, text)``.

    Scripts, styles and other non-text elements are dropped; block elements become line
    breaks; each link's absolute http(s) target follows its text in brackets.
    """
    parser = _TextExtractor(base_url)
    parser.feed(html)
    parser.close()
    return parser.title, parser.text


# --------------------------------------------------------------------------- tool


def _kind(mime: str) -> str:
    if mime in ("text/html", "application/xhtml+xml"):
        return "html"
    if mime in ("application/json", "text/json") or mime.endswith("+json"):
        return "json"
    if mime.startswith("text/") or mime.endswith("+xml") or mime == "application/xml":
        return "text"
    return "unknown" if not mime else "binary"


def _charset(response: httpx.Response) -> str:
    name = response.charset_encoding or "utf-8"
    try:
        return codecs.lookup(name).name
    except LookupError:
        return "utf-8"


def _cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _transport_failure(exc: Exception, target: Target) -> ToolError:
    where = target.authority
    bad_cert = _cause(exc, ssl.SSLCertVerificationError)
    if bad_cert is not None:
        # Retrying cannot fix a certificate that does not match the name.
        return ToolError(f"TLS certificate verification failed for {where}: {bad_cert}")
    if isinstance(exc, httpx.TimeoutException):
        return ToolError(f"timed out talking to {where}", retryable=True)
    if isinstance(exc, httpx.TransportError):
        return ToolError(f"network error talking to {where}: {exc}", retryable=True)
    return ToolError(f"request to {where} failed: {exc}", retryable=False)


class HttpFetchTool(Tool):
    """Fetches one http(s) URL allowed by the call's :class:`NetworkPolicy`.

    ``resolver`` replaces the system resolver (tests map names without real DNS);
    ``transport`` replaces the httpx transport (it receives requests addressed to the
    vetted IP, and is not closed by the tool). ``max_bytes`` caps the body read per
    response, ``max_redirects`` the redirects followed, ``timeout_s`` the whole call.
    """

    def __init__(
        self,
        *,
        resolver: Resolver | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_bytes: int = 1_000_000,
        max_redirects: int = 5,
        timeout_s: float = 20.0,
    ) -> None:
        if max_bytes < 1 or max_redirects < 0 or timeout_s <= 0:
            raise ValueError("max_bytes and timeout_s must be positive, max_redirects >= 0")
        self._resolver = resolver
        self._transport = transport
        self._max_bytes = max_bytes
        self._max_redirects = max_redirects
        self._timeout_s = timeout_s
        self._spec = ToolSpec(
            name="http_fetch",
            description=(
                "Fetch a web page or API response with HTTP GET and return its readable "
                "text (HTML reduced to text with link targets; JSON and plain text as is). "
                "Only hosts allowed by the run's network policy can be reached."
            ),
            parameters={
                "type": "object",
                "properties": {
                    "url": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": MAX_URL_CHARS,
                        "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://",
                        "description": "An absolute http:// or https:// URL.",
                    }
                },
                "required": ["url"],
                "additionalProperties": False,
            },
            risk_tier="low",
            timeout_s=timeout_s,
            max_attempts=3,
            safe_to_retry=True,
            idempotent=True,
        )

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolResult:
        url = args.get("url")
        if not isinstance(url, str) or not url:
            raise ToolError("argument 'url' must be a non-empty string")
        policy = EgressPolicy(ctx.network, self._resolver)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                return await self._fetch(url, policy, deadline)
        except TimeoutError:
            raise ToolError(f"timed out after {self._timeout_s:g} s", retryable=True) from None

    async def _fetch(self, url: str, policy: EgressPolicy, deadline: float) -> ToolResult:
        visited: list[str] = []
        while True:
            try:
                decision = await policy.check(url)
            except OSError as exc:
                raise ToolError(f"could not resolve the host of {url}: {exc}", retryable=True) from None
            if not decision.allowed or decision.target is None:
                hop = f" (redirected from {visited[-1]})" if visited else ""
                raise ToolError(f"blocked by egress policy{hop}: {decision.reason}")
            target = decision.target
            outcome = await self._hop(target, visited, deadline)
            if isinstance(outcome, ToolResult):
                return outcome
            if len(visited) >= self._max_redirects:
                raise ToolError(
                    f"too many redirects (more than {self._max_redirects}); last hop {target.url}"
                )
            visited.append(target.url)
            url = urljoin(target.url, outcome)

    async def _hop(self, target: Target, visited: list[str], deadline: float) -> ToolResult | str:
        """One request: the result, or the ``Location`` to go to next for a redirect."""
        # A fresh pool per hop: httpx pools by (scheme, IP, port), and reusing a TLS
        # connection made for one name to talk to another name on that IP must not happen.
        transport = self._transport or httpx.AsyncHTTPTransport(retries=0)
        try:
            response = await self._send(transport, target, deadline)
            try:
                if response.status_code in REDIRECT_STATUSES and "location" in response.headers:
                    return response.headers["location"]
                return await self._result(target, response, visited)
            except (httpx.HTTPError, httpx.StreamError) as exc:
                raise _transport_failure(exc, target) from None
            finally:
                await response.aclose()
        finally:
            if transport is not self._transport:
                await transport.aclose()

    async def _send(
        self, transport: httpx.AsyncBaseTransport, target: Target, deadline: float
    ) -> httpx.Response:
        failure: ToolError | None = None
        for ip in target.addresses:
            request = self._request(target, ip, deadline)
            try:
                response = await transport.handle_async_request(request)
            except httpx.ConnectError as exc:
                failure = _transport_failure(exc, target)
                continue  # try the next vetted address
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise _transport_failure(exc, target) from None
            response.request = request
            return response
        raise failure or ToolError(f"no address to connect to for {target.host}")

    def _request(self, target: Target, ip: IPAddress, deadline: float) -> httpx.Request:
        remaining = max(0.001, deadline - asyncio.get_running_loop().time())
        extensions: dict[str, Any] = {"timeout": httpx.Timeout(remaining).as_dict()}
        if target.scheme == "https" and not target.is_ip_literal:
            extensions["sni_hostname"] = target.host
        literal = f"[{ip}]" if ip.version == 6 else str(ip)
        try:
            return httpx.Request(
                "GET",
                f"{target.scheme}://{literal}:{target.port}{target.path}",
                headers={
                    "Host": target.authority,
                    "User-Agent": USER_AGENT,
                    "Accept": "text/html,application/json;q=0.9,text/*;q=0.8,*/*;q=0.1",
                    "Accept-Encoding": "identity",
                },
                extensions=extensions,
            )
        except httpx.InvalidURL as exc:
            raise ToolError(f"invalid URL {target.url}: {exc}") from None

    async def _read(self, response: httpx.Response) -> tuple[bytes, bool]:
        """The body up to ``max_bytes``; stops reading (and drops the rest) at the cap."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > self._max_bytes:
                return b"".join(chunks)[: self._max_bytes], True
        return b"".join(chunks), False

    async def _result(self, target: Target, response: httpx.Response, visited: list[str]) -> ToolResult:
        mime = response.headers.get("content-type", "").split(";")[0].strip().lower()
        kind = _kind(mime)
        data: dict[str, JSONValue] = {
            "url": target.url,
            "status": response.status_code,
            "content_type": mime or None,
            "redirects": list(visited),
        }
        body = b""
        truncated = False
        if kind != "binary":
            body, truncated = await self._read(response)
            if kind == "unknown" and b"\x00" in body[:4096]:
                kind = "binary"
        if kind == "binary":
            length = response.headers.get("content-length")
            size = f"{length} bytes" if length and length.isdigit() else "unknown size"
            data["summary"] = f"{mime or 'binary'} content ({size}), not shown"
            data["text"] = None
        else:
            text = body.decode(_charset(response), errors="replace")
            if kind == "html":
                title, text = html_to_text(text, target.url)
                data["title"] = sanitize_text(title) if title else None
            data["text"] = sanitize_text(text)
            data["truncated"] = truncated
            data["bytes"] = len(body)
        if response.status_code >= 400:
            reason = response.reason_phrase
            return ToolResult.failure(f"HTTP {response.status_code} {reason}".strip(), data)
        return ToolResult.success(data)
