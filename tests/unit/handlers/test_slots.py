"""Fair slots: tenants share a bounded pool by weight, and cancellation never leaks a slot.

Grant order is asserted, never time: every holder records its tenant when it is granted."""

from __future__ import annotations

import asyncio

import pytest

from handlers.llm.base import ModelClient
from handlers.llm.messages import ModelRequest, ModelResponse, UserMessage
from handlers.slots import FairSlots, SlottedModel

pytestmark = pytest.mark.unit


async def grant_order(slots: FairSlots, tenants: list[str]) -> list[str]:
    """Start one call per entry, in order; return the tenants in the order they got a slot."""
    order: list[str] = []

    async def call(tenant: str) -> None:
        async with slots.slot(tenant):
            order.append(tenant)
            await asyncio.sleep(0)

    await asyncio.gather(*(call(t) for t in tenants))
    assert slots.held == 0 and slots.waiting == 0 and slots.waiting_tenants == 0
    return order


async def test_a_small_tenant_is_not_starved_by_a_large_backlog() -> None:
    order = await grant_order(FairSlots(2), ["A"] * 1000 + ["B"] * 10)
    assert len(order) == 1010
    b_grants = [i for i, tenant in enumerate(order) if tenant == "B"]
    assert len(b_grants) == 10
    assert max(b_grants) < 22  # two free slots went to A at once; then A and B alternate


async def test_weights_share_the_slots_in_proportion() -> None:
    weights = {"A": 3.0, "B": 1.0, "C": 0.5}
    slots = FairSlots(1, weight=lambda t: weights[t])
    order = await grant_order(slots, ["A"] * 300 + ["B"] * 300 + ["C"] * 300)
    # The first call took the free slot; then rounds of A A A B (+ C every other round).
    window = order[1:91]  # 20 rounds: 60 A, 20 B, 10 C
    assert (window.count("A"), window.count("B"), window.count("C")) == (60, 20, 10)


async def test_calls_of_one_tenant_are_granted_in_arrival_order() -> None:
    slots = FairSlots(1)
    order: list[int] = []

    async def call(n: int) -> None:
        async with slots.slot("A"):
            order.append(n)
            await asyncio.sleep(0)

    await asyncio.gather(*(call(n) for n in range(50)))
    assert order == list(range(50))


async def test_a_cancelled_waiter_gives_up_its_place() -> None:
    slots = FairSlots(1)
    await slots.acquire("A")
    first = asyncio.create_task(slots.acquire("B"))
    second = asyncio.create_task(slots.acquire("B"))
    await asyncio.sleep(0)
    assert slots.waiting == 2
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert slots.waiting == 1
    slots.release()
    await second
    assert slots.held == 1 and slots.waiting == 0 and slots.waiting_tenants == 0
    slots.release()
    assert slots.held == 0


async def test_a_waiter_cancelled_before_its_cleanup_runs_is_skipped() -> None:
    slots = FairSlots(1)
    await slots.acquire("A")
    doomed = asyncio.create_task(slots.acquire("B"))
    other = asyncio.create_task(slots.acquire("C"))
    await asyncio.sleep(0)
    doomed.cancel()  # its future is cancelled now, its except clause runs later
    slots.release()
    await other
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert slots.held == 1 and slots.waiting == 0 and slots.waiting_tenants == 0


async def test_a_waiter_cancelled_just_after_being_granted_passes_the_slot_on() -> None:
    slots = FairSlots(1)
    await slots.acquire("A")
    granted = asyncio.create_task(slots.acquire("B"))
    behind = asyncio.create_task(slots.acquire("C"))
    await asyncio.sleep(0)
    slots.release()  # hands the slot to B's waiter ...
    granted.cancel()  # ... which is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await granted
    await behind
    assert slots.held == 1 and slots.waiting == 0


async def test_a_cancelled_holder_releases_its_slot() -> None:
    slots = FairSlots(1)
    entered = asyncio.Event()

    async def hold_forever() -> None:
        async with slots.slot("A"):
            entered.set()
            await asyncio.Event().wait()

    holder = asyncio.create_task(hold_forever())
    await entered.wait()
    waiter = asyncio.create_task(slots.acquire("B"))
    await asyncio.sleep(0)
    holder.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holder
    await waiter
    assert slots.held == 1
    slots.release()
    assert slots.held == 0


async def test_a_failing_holder_releases_its_slot() -> None:
    slots = FairSlots(1)
    with pytest.raises(RuntimeError):
        async with slots.slot("A"):
            raise RuntimeError("the call failed")
    assert slots.held == 0


async def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="capacity"):
        FairSlots(0)
    slots = FairSlots(1, weight=lambda _t: 0)
    await slots.acquire("A")
    with pytest.raises(ValueError, match="weight of tenant 'B'"):
        await slots.acquire("B")
    assert slots.waiting_tenants == 0 and slots.held == 1


async def test_a_slotted_model_holds_a_slot_during_each_call() -> None:
    slots = FairSlots(1)
    seen: list[int] = []

    class Probe(ModelClient):
        async def complete(self, request: ModelRequest) -> ModelResponse:
            seen.append(slots.held)
            return ModelResponse(text="hi", model="m")

    inner = Probe()
    model = SlottedModel(inner, slots, "A")
    response = await model.complete(ModelRequest(messages=[UserMessage(content="q")]))
    assert response.text == "hi" and seen == [1] and slots.held == 0
    assert model.name == inner.name
