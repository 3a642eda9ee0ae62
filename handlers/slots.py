"""Fair slots: a bounded number of concurrent calls, shared across tenants by weight.

Thousands of model and tool calls may be waiting at once. `FairSlots` bounds how many run
and decides who goes next by deficit round robin over the tenants that have waiting calls:
each tenant's turn grants up to its weight in slots, then the next tenant's turn comes. A
tenant with 5,000 waiting calls therefore gets its share of the slots, never all of them,
and a tenant with 10 gets its 10 through promptly.

The waiters are the calling coroutines themselves: one future each, in one deque per
tenant that has waiters, dropped as soon as it is empty. Nothing else grows with the
backlog. docs/design/004-fair-share.md says why deficit round robin.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from handlers.llm.base import ModelClient
from handlers.llm.messages import ModelRequest, ModelResponse

__all__ = ["FairSlots", "SlottedModel"]


@dataclass
class _TenantQueue:
    weight: float
    deficit: float = 0.0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)


class FairSlots:
    """A pool of `capacity` slots that tenants' calls hold while they run, granted fairly.

    While a slot is free and nobody waits, a call takes it at once. Otherwise it waits in
    its tenant's queue (in arrival order within the tenant), and every freed slot is handed
    straight to the next waiter in deficit round robin order over the waiting tenants.
    `weight(tenant)` (a positive number, read when a tenant starts waiting) is the share of
    a tenant's turn: weight 3 gets three slots for every one of a tenant with weight 1.
    Fractional weights carry over between turns.

    A waiter that is cancelled gives up its place; a holder that is cancelled (or raises)
    releases its slot, since `slot()` releases in a `finally`.
    """

    def __init__(self, capacity: int, weight: Callable[[str], float] = lambda _tenant: 1.0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1: {capacity}")
        self.capacity = capacity
        self._weight = weight
        self._held = 0
        # Tenants with waiters, in round-robin order: the first one has the turn.
        self._queues: OrderedDict[str, _TenantQueue] = OrderedDict()

    @property
    def held(self) -> int:
        """Slots in use."""
        return self._held

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot."""
        return sum(len(q.waiters) for q in self._queues.values())

    @property
    def waiting_tenants(self) -> int:
        """Tenants with at least one call waiting (each holds one queue)."""
        return len(self._queues)

    @contextlib.asynccontextmanager
    async def slot(self, tenant: str) -> AsyncIterator[None]:
        """Hold one slot for the body of the `async with`."""
        await self.acquire(tenant)
        try:
            yield
        finally:
            self.release()

    async def acquire(self, tenant: str) -> None:
        """Wait for a slot; pair with exactly one `release()` (or use `slot()`)."""
        if self._held < self.capacity and not self._queues:
            self._held += 1
            return
        queue = self._queues.get(tenant)
        if queue is None:
            weight = self._weight(tenant)
            if not weight > 0:
                raise ValueError(f"the weight of tenant {tenant!r} must be positive: {weight!r}")
            queue = self._queues[tenant] = _TenantQueue(weight)
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.waiters.append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release()  # handed a slot just as it was cancelled: pass it on
            else:
                self._forget(tenant, granted)
            raise

    def release(self) -> None:
        """Give a slot back: it goes to the next waiter, or becomes free."""
        waiter = self._next_waiter()
        if waiter is None:
            self._held -= 1
        else:
            waiter.set_result(None)  # handed over: the count of held slots stays

    def _forget(self, tenant: str, waiter: asyncio.Future[None]) -> None:
        queue = self._queues.get(tenant)
        if queue is None:
            return
        with contextlib.suppress(ValueError):  # already skipped by a release
            queue.waiters.remove(waiter)
        if not queue.waiters:
            del self._queues[tenant]

    def _next_waiter(self) -> asyncio.Future[None] | None:
        while self._queues:
            tenant, queue = next(iter(self._queues.items()))
            # A waiter cancelled a moment ago has not run its cleanup yet: skip it.
            while queue.waiters and queue.waiters[0].done():
                queue.waiters.popleft()
            if not queue.waiters:
                del self._queues[tenant]
                continue
            if queue.deficit < 1:  # a new turn
                queue.deficit += queue.weight
                if queue.deficit < 1:  # a weight below 1 saves up over several turns
                    self._queues.move_to_end(tenant)
                    continue
            queue.deficit -= 1
            waiter = queue.waiters.popleft()
            if not queue.waiters:
                del self._queues[tenant]  # deficit round robin: an idle tenant keeps no credit
            elif queue.deficit < 1:
                self._queues.move_to_end(tenant)
            return waiter
        return None


class SlottedModel(ModelClient):
    """A model client whose every call holds one of a tenant's model slots while it runs."""

    def __init__(self, inner: ModelClient, slots: FairSlots, tenant: str) -> None:
        self.inner = inner
        self.slots = slots
        self.tenant = tenant

    @property
    def name(self) -> str:
        """The inner client's name."""
        return self.inner.name

    async def complete(self, request: ModelRequest) -> ModelResponse:
        async with self.slots.slot(self.tenant):
            return await self.inner.complete(request)

    async def aclose(self) -> None:
        """Nothing: the inner client belongs to whoever made it."""
