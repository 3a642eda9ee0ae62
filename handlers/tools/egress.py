"""Outbound network policy for tools: which URLs a tool may fetch, decided before connecting.

The policy is deny-by-default. A URL is allowed only when all of these hold:

1. the scheme is ``http`` or ``https`` and the URL carries no credentials;
2. its host, normalized the way resolvers read it (see :func:`normalize_host`), is on the
   allowlist of the :class:`NetworkPolicy`;
3. every address the host stands for (the literal itself, or every address the resolver
   returns) is a public address, or falls in a range the policy explicitly opens
   (``allow_loopback``, ``allow_private``). Cloud metadata endpoints, link-local,
   unspecified, multicast and reserved ranges are never opened.

:meth:`EgressPolicy.check` returns a :class:`Decision`; when allowed it carries the vetted
addresses, and callers must connect to one of those (never re-resolve the name), so a DNS
answer that changes between check and connect cannot redirect the request.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import string
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import idna

__all__ = [
    "METADATA_ADDRESSES",
    "METADATA_HOSTS",
    "Decision",
    "EgressPolicy",
    "IPAddress",
    "InvalidHostError",
    "NetworkPolicy",
    "Resolver",
    "Target",
    "classify_address",
    "normalize_host",
    "system_resolver",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

Resolver = Callable[[str], Awaitable[Sequence[str]]]
"""Maps a normalized host name to the textual addresses it resolves to.

Raises :class:`OSError` (e.g. :class:`socket.gaierror`) when the name cannot be resolved.
Injected so tests can map names to addresses without real DNS.
"""

METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ... instance metadata
        "169.254.170.2",  # AWS ECS task metadata / credentials
        "169.254.170.23",  # AWS ECS task metadata v4 (Fargate)
        "100.100.100.200",  # Alibaba Cloud metadata
        "168.63.129.16",  # Azure WireServer (a public address with privileged meaning)
        "192.0.0.192",  # Oracle Cloud (legacy) metadata
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",  # AWS Route 53 resolver over IPv6
    )
)
"""Cloud metadata endpoints: blocked whatever the policy says."""

METADATA_HOSTS: frozenset[str] = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
"""Host names that reach cloud metadata services: blocked before any resolution."""

_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",  # carrier-grade NAT shared space
        "fc00::/7",  # unique local
        "fec0::/10",  # deprecated site-local
    )
)

_MAX_HOST_LEN = 253
_MAX_URL_LEN = 4096
_HOST_CHARS = frozenset(string.ascii_lowercase + string.digits + "-_.")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Characters that different URL parsers disagree about; refusing them avoids a check on
# one reading of the URL and a request on another.
_FORBIDDEN_URL_CHARS = frozenset("\\" + "".join(chr(c) for c in range(0x21)) + "\x7f")


class InvalidHostError(ValueError):
    """A host that is not a valid DNS name or IP address literal."""


# --------------------------------------------------------------------------- hosts


def _parse_ipv4_part(part: str) -> int | None:
    """One dotted part as inet_aton/WHATWG read it: decimal, 0x-hex or 0-prefixed octal."""
    if not part:
        return None
    if part[:2] in ("0x", "0X"):
        digits, base, allowed = part[2:], 16, string.hexdigits
        if not digits:
            return 0
    elif len(part) > 1 and part[0] == "0":
        digits, base, allowed = part[1:], 8, string.octdigits
    else:
        digits, base, allowed = part, 10, string.digits
    if not all(c in allowed for c in digits):
        return None
    return int(digits, base)


def _ends_in_number(host: str) -> bool:
    """WHATWG "ends in a number": such a host must parse as IPv4 or is invalid."""
    last = host.split(".")[-1]
    if last and all(c in string.digits for c in last):
        return True
    return last[:2] in ("0x", "0X") and all(c in string.hexdigits for c in last[2:])


def _parse_ipv4(host: str) -> ipaddress.IPv4Address:
    parts = host.split(".")
    if len(parts) > 4:
        raise InvalidHostError(f"{host!r} has too many parts for an IPv4 address")
    numbers = [_parse_ipv4_part(p) for p in parts]
    if any(n is None for n in numbers):
        raise InvalidHostError(f"{host!r} is not a valid IPv4 address")
    nums = [n for n in numbers if n is not None]
    if any(n > 255 for n in nums[:-1]) or nums[-1] >= 256 ** (5 - len(nums)):
        raise InvalidHostError(f"{host!r} is out of range for an IPv4 address")
    value = nums[-1]
    for i, n in enumerate(nums[:-1]):
        value += n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def _canonical_ip(ip: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address reaches the IPv4 host, so treat it as that host."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _parse_ipv6(text: str) -> IPAddress:
    if "%" in text:
        raise InvalidHostError("IPv6 zone identifiers are not allowed")
    try:
        return _canonical_ip(ipaddress.IPv6Address(text))
    except ValueError as exc:
        raise InvalidHostError(f"{text!r} is not a valid IPv6 address") from exc


def normalize_host(raw: str) -> str:
    """Return the canonical form of a URL host, as a resolver would interpret it.

    IP literals come back in their standard textual form: ``2130706433``, ``0x7f000001``,
    ``0177.0.0.1``, ``127.1`` and ``[::ffff:127.0.0.1]`` all become ``127.0.0.1``; IPv6 is
    compressed and lowercase, without brackets. Names are lowercased, IDNA-encoded (UTS 46
    mapping, so full-width digits and dots are folded too) and lose one trailing dot.

    Raises :class:`InvalidHostError` for anything else, including percent-encoded hosts,
    zone identifiers and names whose last label is numeric but not a valid IPv4 address.
    """
    host = raw
    if not host:
        raise InvalidHostError("empty host")
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]")):
            raise InvalidHostError(f"unbalanced brackets in host {raw!r}")
        return str(_parse_ipv6(host[1:-1]))
    if ":" in host:
        return str(_parse_ipv6(host))
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True, transitional=False).decode("ascii")
        except (idna.IDNAError, UnicodeError) as exc:
            raise InvalidHostError(f"host {raw!r} is not a valid internationalized name") from exc
    host = host.lower()
    host = host.removesuffix(".")
    if not host or len(host) > _MAX_HOST_LEN:
        raise InvalidHostError(f"host {raw!r} has an invalid length")
    if not set(host) <= _HOST_CHARS:
        raise InvalidHostError(f"host {raw!r} contains characters not allowed in a host name")
    if _ends_in_number(host):
        return str(_parse_ipv4(host))
    if any(not label or len(label) > 63 for label in host.split(".")):
        raise InvalidHostError(f"host {raw!r} has an empty or over-long label")
    return host


def _ip_literal(host: str) -> IPAddress | None:
    """The address a normalized host denotes, or None when it is a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


# --------------------------------------------------------------------------- addresses


def classify_address(
    ip: IPAddress, *, allow_loopback: bool = False, allow_private: bool = False
) -> str | None:
    """Return why ``ip`` may not be contacted, or None when it may.

    Loopback and private ranges are opened by the flags; metadata endpoints, link-local,
    unspecified, multicast and every other non-global range never are. IPv6 addresses that
    embed an IPv4 address (IPv4-mapped, NAT64, 6to4) are judged by the embedded address.
    """
    ip = _canonical_ip(ip)
    if isinstance(ip, ipaddress.IPv6Address):
        embedded: ipaddress.IPv4Address | None = None
        if ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        elif ip.sixtofour is not None:
            embedded = ip.sixtofour
        if embedded is not None:
            reason = classify_address(embedded, allow_loopback=allow_loopback, allow_private=allow_private)
            if reason is not None or ip in _NAT64:
                return None if reason is None else f"{reason} (embedded in {ip})"
    if ip in METADATA_ADDRESSES:
        return f"{ip} is a cloud metadata endpoint (always blocked)"
    if ip.is_unspecified or ip in _THIS_NETWORK:
        return f"{ip} is an unspecified address"
    if ip.is_loopback:
        return None if allow_loopback else f"{ip} is a loopback address"
    if ip.is_link_local:
        return f"{ip} is a link-local address (always blocked)"
    if ip.is_multicast:
        return f"{ip} is a multicast address"
    if any(ip in net for net in _PRIVATE_NETWORKS):
        return None if allow_private else f"{ip} is a private address"
    if ip.is_reserved or not ip.is_global:
        return f"{ip} is in a reserved or non-global range"
    return None


# --------------------------------------------------------------------------- policy


def _normalize_pattern(pattern: str) -> str:
    if pattern == "*":
        return pattern
    if pattern.startswith("*."):
        suffix = normalize_host(pattern[2:])
        if _ip_literal(suffix) is not None:
            raise InvalidHostError(f"wildcard pattern {pattern!r} cannot name an IP address")
        return "*." + suffix
    return normalize_host(pattern)


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    """What a tool call may reach on the network; the default reaches nothing.

    ``allowed_hosts`` holds exact hosts (names or IP literals, normalized on construction)
    and ``*.suffix`` patterns, which match any subdomain of ``suffix`` but not ``suffix``
    itself; a lone ``*`` matches every host. Ports are not restricted. Even an allowlisted
    host is refused when it stands for a loopback or private address, unless
    ``allow_loopback`` / ``allow_private`` opens that range.
    """

    allowed_hosts: tuple[str, ...] = ()
    allow_private: bool = False
    allow_loopback: bool = False

    def __post_init__(self) -> None:
        hosts: object = self.allowed_hosts  # a bare str would silently become one host per letter
        if isinstance(hosts, str):
            raise TypeError("allowed_hosts must be a sequence of host patterns, not a string")
        normalized = tuple(_normalize_pattern(p) for p in self.allowed_hosts)
        object.__setattr__(self, "allowed_hosts", normalized)

    def allows_host(self, host: str) -> bool:
        """Whether the normalized ``host`` matches the allowlist."""
        is_ip = _ip_literal(host) is not None
        for pattern in self.allowed_hosts:
            if pattern == "*" or pattern == host:
                return True
            if not is_ip and pattern.startswith("*.") and host.endswith(pattern[1:]):
                return True
        return False


@dataclass(frozen=True, slots=True)
class Target:
    """A vetted destination: where to connect and what to ask for."""

    scheme: Literal["http", "https"]
    host: str
    """Normalized host: an ASCII name or an IP literal (IPv6 without brackets)."""
    port: int
    path: str
    """Path and query, always starting with ``/``; the fragment is dropped."""
    addresses: tuple[IPAddress, ...]
    """Every address the host stands for, each one checked; connect only to these."""

    @property
    def is_ip_literal(self) -> bool:
        """Whether the URL named an address rather than a host name."""
        return _ip_literal(self.host) is not None

    @property
    def authority(self) -> str:
        """``host[:port]`` as it belongs in a URL or a ``Host`` header."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The normalized URL, as checked."""
        return f"{self.scheme}://{self.authority}{self.path}"


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on one URL; ``target`` is set exactly when ``allowed``."""

    allowed: bool
    reason: str
    target: Target | None = None


async def system_resolver(host: str) -> Sequence[str]:
    """Resolve ``host`` with the operating system's resolver (``getaddrinfo``)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


def _deny(reason: str) -> Decision:
    return Decision(allowed=False, reason=reason)


class EgressPolicy:
    """Decides whether a URL may be fetched under a :class:`NetworkPolicy`.

    Host names are resolved with ``resolver`` (the system resolver by default) only after
    the host passed the allowlist, so unlisted names never reach DNS either.
    """

    def __init__(self, network: NetworkPolicy, resolver: Resolver | None = None) -> None:
        self.network = network
        self._resolve = resolver or system_resolver

    def _blocked(self, ip: IPAddress) -> str | None:
        return classify_address(
            ip,
            allow_loopback=self.network.allow_loopback,
            allow_private=self.network.allow_private,
        )

    async def check(self, url: str) -> Decision:
        """Judge ``url`` without connecting anywhere.

        May call the resolver for host names; raises :class:`OSError` when that fails.
        """
        if len(url) > _MAX_URL_LEN:
            return _deny(f"URL is longer than {_MAX_URL_LEN} characters")
        if any(c in _FORBIDDEN_URL_CHARS for c in url):
            return _deny("URL contains whitespace, control characters or backslashes")
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            return _deny(f"malformed URL: {exc}")
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            return _deny(f"scheme {parts.scheme!r} is not allowed (only http and https)")
        netloc = parts.netloc
        if "@" in netloc:
            return _deny("credentials in URLs are not allowed")
        if netloc.startswith("["):
            raw_host, _, port_text = netloc.partition("]")
            raw_host += "]"
            if port_text and not port_text.startswith(":"):
                return _deny(f"malformed authority {netloc!r}")
            port_text = port_text[1:]
        else:
            raw_host, _, port_text = netloc.partition(":")
        if port_text:
            if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
                return _deny(f"invalid port {port_text!r}")
            port = int(port_text)
            if not 0 < port < 65536:
                return _deny(f"invalid port {port}")
        else:
            port = _DEFAULT_PORTS[scheme]
        try:
            host = normalize_host(raw_host)
        except InvalidHostError as exc:
            return _deny(f"invalid host: {exc}")
        if host in METADATA_HOSTS:
            return _deny(f"host {host!r} is a cloud metadata endpoint (always blocked)")
        if not self.network.allows_host(host):
            return _deny(f"host {host!r} is not on the egress allowlist")

        literal = _ip_literal(host)
        if literal is not None:
            addresses: tuple[IPAddress, ...] = (literal,)
        elif (host == "localhost" or host.endswith(".localhost")) and (not self.network.allow_loopback):
            # RFC 6761: these names are loopback by definition, whatever DNS says.
            return _deny(f"host {host!r} is a loopback name")
        else:
            addresses = await self._resolved(host)
            if not addresses:
                return _deny(f"host {host!r} resolved to no usable address")
        for ip in addresses:
            reason = self._blocked(ip)
            if reason is not None:
                if literal is None:
                    reason = f"host {host!r} resolves to a blocked address: {reason}"
                return _deny(reason)

        path = parts.path or "/"
        if not path.startswith("/"):
            path = "/" + path
        if parts.query:
            path += "?" + parts.query
        target = Target(
            scheme="https" if scheme == "https" else "http",
            host=host,
            port=port,
            path=path,
            addresses=addresses,
        )
        shown = ", ".join(str(a) for a in addresses)
        return Decision(allowed=True, reason=f"{host!r} allowed ({shown})", target=target)

    async def _resolved(self, host: str) -> tuple[IPAddress, ...]:
        seen: dict[IPAddress, None] = {}
        for text in await self._resolve(host):
            try:
                # Resolvers may return scoped IPv6 ("fe80::1%eth0"); the scope is irrelevant
                # to the verdict.
                ip = ipaddress.ip_address(text.split("%", 1)[0])
            except ValueError as exc:
                raise OSError(f"resolver returned a non-address {text!r} for {host!r}") from exc
            seen.setdefault(_canonical_ip(ip), None)
        return tuple(seen)
