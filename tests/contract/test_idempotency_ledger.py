"""The idempotency ledger on every backend: of many claims of one key, exactly one is `new`."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from projections.idempotency import IdempotencyLedger, open_ledger
from tests.support.stores import StoreBackend

pytestmark = pytest.mark.contract


@pytest.fixture
async def ledger(store_backend: StoreBackend) -> AsyncIterator[IdempotencyLedger]:
    opened = open_ledger(store_backend.url("ledger").split("?", 1)[0])
    yield opened
    await opened.aclose()


async def test_a_key_is_new_then_started_then_completed(ledger: IdempotencyLedger) -> None:
    key = f"k-{uuid.uuid4().hex}"
    first = await ledger.claim(key, "run-1", "http")
    assert (first.state, first.result_json, first.attempts) == ("new", None, 1)
    again = await ledger.claim(key, "run-1", "http")
    assert (again.state, again.result_json, again.attempts) == ("started", None, 2)
    third = await ledger.claim(key, "run-1", "http")
    assert (third.state, third.attempts) == ("started", 3)
    await ledger.complete(key, '{"ok": true}')
    done = await ledger.claim(key, "run-1", "http")
    assert (done.state, done.result_json) == ("completed", '{"ok": true}')
    other = await ledger.claim(f"{key}-other", "run-1", "http")
    assert other.state == "new", "keys are independent"


async def test_of_concurrent_claims_exactly_one_is_new(store_backend: StoreBackend) -> None:
    url = store_backend.url("ledger").split("?", 1)[0]
    ledgers = [open_ledger(url) for _ in range(4)]  # as if four workers
    try:
        key = f"k-{uuid.uuid4().hex}"
        claims = await asyncio.gather(*(ledgers[i % 4].claim(key, "run-1", "sql") for i in range(12)))
        assert sorted(c.state for c in claims).count("new") == 1
        assert all(c.state in ("new", "started") for c in claims)
        assert sorted(c.attempts for c in claims) == list(range(1, 13)), "every attempt is counted once"
    finally:
        for opened in ledgers:
            await opened.aclose()
