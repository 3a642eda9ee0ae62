"""The egress decision: host normalization, address classes, allowlist, URL checks.

Nothing here opens a socket: decisions are computed from the URL and a scripted resolver.
"""

from __future__ import annotations

import ipaddress

import pytest

from handlers.tools.egress import (
    EgressPolicy,
    InvalidHostError,
    NetworkPolicy,
    classify_address,
    normalize_host,
)
from tests.unit.tools.fakes import FakeResolver

pytestmark = pytest.mark.unit

OPEN = NetworkPolicy(allowed_hosts=("*",), allow_private=True, allow_loopback=True)
"""The widest policy there is; what it still refuses is refused always."""


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0177.0000.0.01", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("[::ffff:127.0.0.1]", "127.0.0.1"),
        ("[::ffff:7f00:1]", "127.0.0.1"),
        ("[0:0:0:0:0:0:0:1]", "::1"),
        ("[::1]", "::1"),
        ("[FD00:EC2::254]", "fd00:ec2::254"),
        ("0xa9fea9fe", "169.254.169.254"),
        ("0", "0.0.0.0"),
        (
            "\uff11\uff12\uff17\uff0e\uff10\uff0e\uff10\uff0e\uff11",
            "127.0.0.1",
        ),  # full-width
        ("LocalHost", "localhost"),
        ("Example.COM.", "example.com"),
        ("b\u00fccher.example", "xn--bcher-kva.example"),
        ("\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com", "example.com"),
        ("under_score.example", "under_score.example"),
    ],
)
def test_normalize_host_like_a_resolver(raw: str, expected: str) -> None:
    assert normalize_host(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "1.2.3.4.5",
        "256.0.0.1",
        "4294967296",
        "08.0.0.1",
        "0x1g.0.0.1",
        "example.123",
        "a..b",
        "%31%32%37.0.0.1",
        "exa mple.com",
        "[::1",
        "[fe80::1%25eth0]",
        "[not-an-ip]",
        "a" * 64 + ".com",
        "x." * 130 + "com",
    ],
)
def test_normalize_host_rejects_invalid(raw: str) -> None:
    with pytest.raises(InvalidHostError):
        normalize_host(raw)


@pytest.mark.parametrize(
    ("address", "closed", "opened"),
    [
        ("8.8.8.8", None, None),
        ("2606:4700:4700::1111", None, None),
        ("127.0.0.1", "loopback", None),
        ("127.255.0.9", "loopback", None),
        ("::1", "loopback", None),
        ("10.0.0.5", "private", None),
        ("172.16.0.1", "private", None),
        ("172.31.255.255", "private", None),
        ("192.168.1.1", "private", None),
        ("100.64.0.1", "private", None),
        ("fc00::1", "private", None),
        ("fd12:3456::1", "private", None),
        ("::ffff:10.0.0.1", "private", None),
        ("64:ff9b::a00:5", "private", None),  # NAT64 of 10.0.0.5
        ("2002:7f00:1::", "loopback", None),  # 6to4 of 127.0.0.1
        ("169.254.169.254", "metadata", "metadata"),
        ("169.254.170.2", "metadata", "metadata"),
        ("100.100.100.200", "metadata", "metadata"),
        ("fd00:ec2::254", "metadata", "metadata"),
        ("::ffff:169.254.169.254", "metadata", "metadata"),
        ("169.254.1.1", "link-local", "link-local"),
        ("fe80::1", "link-local", "link-local"),
        ("0.0.0.0", "unspecified", "unspecified"),
        ("0.1.2.3", "unspecified", "unspecified"),
        ("::", "unspecified", "unspecified"),
        ("224.0.0.1", "multicast", "multicast"),
        ("ff02::1", "multicast", "multicast"),
        ("240.0.0.1", "reserved", "reserved"),
        ("255.255.255.255", "reserved", "reserved"),
        ("192.0.2.1", "reserved", "reserved"),
        ("198.18.0.1", "reserved", "reserved"),
        ("2001:db8::1", "reserved", "reserved"),
        ("::7f00:1", "reserved", "reserved"),
    ],
)
def test_classify_address(address: str, closed: str | None, opened: str | None) -> None:
    ip = ipaddress.ip_address(address)
    verdict = classify_address(ip)
    assert (verdict is None) == (closed is None)
    if closed is not None:
        assert verdict is not None and closed in verdict
    wide = classify_address(ip, allow_loopback=True, allow_private=True)
    assert (wide is None) == (opened is None)
    if opened is not None:
        assert wide is not None and opened in wide


def test_flags_open_only_their_own_range() -> None:
    loopback, private = (
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("10.1.2.3"),
    )
    assert classify_address(loopback, allow_private=True) is not None
    assert classify_address(private, allow_loopback=True) is not None


def test_policy_normalizes_allowlist_and_matches_patterns() -> None:
    policy = NetworkPolicy(allowed_hosts=("API.Example.com.", "*.Docs.Example.org", "0x7f000001"))
    assert policy.allowed_hosts == (
        "api.example.com",
        "*.docs.example.org",
        "127.0.0.1",
    )
    assert policy.allows_host("api.example.com")
    assert not policy.allows_host("www.example.com")
    assert policy.allows_host("a.docs.example.org")
    assert policy.allows_host("a.b.docs.example.org")
    assert not policy.allows_host("docs.example.org")  # a wildcard does not match the apex
    assert not policy.allows_host("evildocs.example.org")
    assert policy.allows_host("127.0.0.1")
    assert not NetworkPolicy().allows_host("example.com")


@pytest.mark.parametrize("pattern", ["*.127.0.0.1", "bad host", "*.", "[::1"])
def test_policy_rejects_bad_patterns(pattern: str) -> None:
    with pytest.raises(InvalidHostError):
        NetworkPolicy(allowed_hosts=(pattern,))


def test_policy_rejects_a_bare_string() -> None:
    with pytest.raises(TypeError):
        NetworkPolicy(allowed_hosts="example.com")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- URL checks


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://169.254.169.254:80/",
        "http://0xa9fea9fe/",
        "http://2852039166/",
        "http://[::ffff:169.254.169.254]/",
        "http://169.254.170.2/v2/credentials",
        "http://100.100.100.200/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://Metadata.Google.Internal./",
    ],
)
async def test_metadata_is_refused_under_the_widest_policy(url: str) -> None:
    resolver = FakeResolver()
    decision = await EgressPolicy(OPEN, resolver).check(url)
    assert not decision.allowed and decision.target is None
    assert "metadata" in decision.reason
    assert resolver.calls == []  # decided without even a DNS lookup


@pytest.mark.asyncio
async def test_metadata_ip_decision_alone() -> None:
    policy = NetworkPolicy(allowed_hosts=("169.254.169.254",))
    decision = await EgressPolicy(policy).check("http://169.254.169.254/")
    assert decision.allowed is False
    assert decision.reason == "169.254.169.254 is a cloud metadata endpoint (always blocked)"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("ftp://files.example.com/", "scheme 'ftp' is not allowed"),
        ("gopher://files.example.com/", "scheme 'gopher' is not allowed"),
        ("example.com/path", "scheme '' is not allowed"),
        ("http://user:pw@files.example.com/", "credentials"),
        ("http://files.example.com@127.0.0.1/", "credentials"),
        ("http://files.example.com\\@127.0.0.1/", "backslashes"),
        ("http://files.example.com /", "whitespace"),
        ("http://files.example.com/\r\nX: y", "control characters"),
        ("http:///path", "invalid host"),
        ("http://[::1/", "malformed URL"),
        ("http://files.example.com:0/", "invalid port"),
        ("http://files.example.com:65536/", "invalid port"),
        ("http://files.example.com:8o/", "invalid port"),
        ("http://files.example.com:-1/", "invalid port"),
        ("http://" + "a" * 5000 + ".com/", "longer than"),
        ("http://other.example.com/", "not on the egress allowlist"),
    ],
)
async def test_malformed_or_unlisted_urls_are_refused(url: str, reason: str) -> None:
    resolver = FakeResolver().add("files.example.com", ["93.184.216.34"])
    policy = NetworkPolicy(allowed_hosts=("files.example.com", "127.0.0.1"), allow_loopback=True)
    decision = await EgressPolicy(policy, resolver).check(url)
    assert not decision.allowed
    assert reason in decision.reason
    assert resolver.calls == []


@pytest.mark.asyncio
async def test_allowed_name_carries_every_vetted_address() -> None:
    resolver = FakeResolver().add("files.example.com", ["93.184.216.34", "2606:2800:220:1::"])
    policy = NetworkPolicy(allowed_hosts=("*.example.com",))
    decision = await EgressPolicy(policy, resolver).check("HTTPS://Files.Example.com./a/b?q=1#frag")
    assert decision.allowed, decision.reason
    target = decision.target
    assert target is not None
    assert target.url == "https://files.example.com/a/b?q=1"
    assert target.authority == "files.example.com"
    assert [str(a) for a in target.addresses] == ["93.184.216.34", "2606:2800:220:1::"]
    assert resolver.calls == ["files.example.com"]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("answers", "reason"),
    [
        (["10.0.0.5"], "10.0.0.5 is a private address"),
        (["93.184.216.34", "10.0.0.5"], "10.0.0.5 is a private address"),
        (["127.0.0.1"], "127.0.0.1 is a loopback address"),
        (["::ffff:192.168.0.1"], "192.168.0.1 is a private address"),
        (["fe80::1%eth0"], "fe80::1 is a link-local address"),
        (["169.254.169.254"], "cloud metadata endpoint"),
        ([], "resolved to no usable address"),
    ],
)
async def test_every_resolved_address_is_checked(answers: list[str], reason: str) -> None:
    resolver = FakeResolver().add("intranet.example.com", answers)
    policy = NetworkPolicy(allowed_hosts=("intranet.example.com",))
    decision = await EgressPolicy(policy, resolver).check("http://intranet.example.com/")
    assert not decision.allowed
    assert reason in decision.reason


@pytest.mark.asyncio
async def test_private_name_is_allowed_only_when_the_policy_opens_private_ranges() -> None:
    resolver = FakeResolver().add("intranet.example.com", ["10.0.0.5"])
    policy = NetworkPolicy(allowed_hosts=("intranet.example.com",), allow_private=True)
    decision = await EgressPolicy(policy, resolver).check("http://intranet.example.com:8080/")
    assert decision.allowed and decision.target is not None
    assert [str(a) for a in decision.target.addresses] == ["10.0.0.5"]


@pytest.mark.asyncio
@pytest.mark.parametrize("host", ["localhost", "LOCALHOST.", "api.localhost"])
async def test_localhost_names_are_loopback_without_a_lookup(host: str) -> None:
    resolver = FakeResolver()
    policy = NetworkPolicy(allowed_hosts=("localhost", "*.localhost"))
    decision = await EgressPolicy(policy, resolver).check(f"http://{host}/")
    assert not decision.allowed
    assert "loopback" in decision.reason
    assert resolver.calls == []


@pytest.mark.asyncio
async def test_resolver_failures_propagate_as_os_errors() -> None:
    policy = NetworkPolicy(allowed_hosts=("nowhere.example.com",))
    with pytest.raises(OSError):
        await EgressPolicy(policy, FakeResolver()).check("http://nowhere.example.com/")

    async def garbage(host: str) -> list[str]:
        return ["not-an-address"]

    with pytest.raises(OSError, match="non-address"):
        await EgressPolicy(policy, garbage).check("http://nowhere.example.com/")
