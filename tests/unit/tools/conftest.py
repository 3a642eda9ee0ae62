"""Fixtures for the tool tests; the doubles themselves live in :mod:`.fakes`."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.unit.tools.fakes import (
    ConnectionTrap,
    FakeResolver,
    LoopbackOnlyTransport,
    LoopbackServer,
    TlsFiles,
)


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    srv = LoopbackServer()
    thread = srv.start()
    try:
        yield srv
    finally:
        srv.stop(thread)


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    """A throwaway certificate for ``pinned.test``, made with the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    name = "pinned.test"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", f"/CN={name}",
            "-addext", f"subjectAltName=DNS:{name}",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return TlsFiles(name=name, cert=cert, key=key)


@pytest.fixture
def trap() -> Iterator[ConnectionTrap]:
    t = ConnectionTrap(socket.AF_INET, "127.0.0.1")
    try:
        yield t
    finally:
        t.close()


@pytest.fixture
def trap6() -> Iterator[ConnectionTrap | None]:
    """The same on ::1, or None where this machine has no IPv6 loopback."""
    try:
        t = ConnectionTrap(socket.AF_INET6, "::1")
    except OSError:
        yield None
        return
    try:
        yield t
    finally:
        t.close()


@pytest_asyncio.fixture
async def transport() -> AsyncIterator[LoopbackOnlyTransport]:
    t = LoopbackOnlyTransport()
    try:
        yield t
    finally:
        await t.aclose()


@pytest.fixture
def resolver() -> FakeResolver:
    return FakeResolver()
