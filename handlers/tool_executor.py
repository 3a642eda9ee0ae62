"""The tool worker: runs dispatched calls and records what happened.

A call runs under its tool's timeout and retry policy. Its idempotency key is claimed in
the ledger first, so a crash-restart or a redelivered dispatch never repeats a side
effect: a completed call's recorded result is reused, and a call whose worker died
mid-way is repeated only if the tool is idempotent. Results are bounded in size; the full
output of a large one goes to the blob store and the observation carries its handle.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

from handlers.observations import MAX_OBSERVATION_CHARS, bounded
from handlers.policy import TenantPolicies, ToolPolicy
from handlers.slots import FairSlots
from handlers.stuck import FailsRunWhenStuck
from handlers.tools.base import ToolContext, ToolError, ToolRegistry, ToolResult
from handlers.tools.sandbox import SandboxTool
from projections.blobs import BlobStore
from projections.control import ControlState, disabled_message
from projections.idempotency import IdempotencyLedger
from projections.run_view import RunViews
from sandbox_jobs.base import LaunchError, SandboxLauncher
from streams.errors import RetryableHandlerError
from streams.events import (
    BudgetCharged,
    Event,
    ObservationRecorded,
    SandboxJobLaunched,
    ToolCallDispatched,
    Usage,
)
from streams.worker import HandlerContext

__all__ = ["MAX_OBSERVATION_CHARS", "ToolExecutor"]


def _result_json(result: ToolResult) -> str:
    return json.dumps({"ok": result.ok, "data": result.data, "error": result.error})


def _result_from_json(text: str) -> ToolResult:
    data: dict[str, Any] = json.loads(text)
    return ToolResult(ok=bool(data["ok"]), data=data.get("data"), error=data.get("error"))


class ToolExecutor(FailsRunWhenStuck):
    """Executes ToolCallDispatched events and emits ObservationRecorded."""

    name = "tool-executor"
    consumes = frozenset({"ToolCallDispatched"})
    ordered = False

    def __init__(
        self,
        registry: ToolRegistry,
        ledger: IdempotencyLedger,
        blobs: BlobStore,
        policy: ToolPolicy | TenantPolicies | None = None,
        *,
        retry_base_delay_s: float = 0.2,
        launcher: SandboxLauncher | None = None,
        launcher_kind: str = "local",
        views: RunViews | None = None,
        job_egress: bool = True,
        slots: FairSlots | None = None,
        control: ControlState | None = None,
    ) -> None:
        """``launcher`` runs sandboxed tools (without one they fail with a clear error);
        ``launcher_kind`` is its URL scheme, recorded on SandboxJobLaunched; ``views``, when
        given, lets a redelivered dispatch of an already observed call launch nothing.
        ``job_egress``: the launcher enforces an egress allowlist, so jobs get the policy's
        hosts; without it jobs get no network at all. ``slots``: the tool call slots a call
        holds while it runs (sandboxed jobs hold none); ``control``: operators' tool kill
        switches, checked again here for calls dispatched before a tool was disabled."""
        self.registry = registry
        self.ledger = ledger
        self.blobs = blobs
        self.policies = TenantPolicies.of(policy)
        self.retry_base_delay_s = retry_base_delay_s
        self.launcher = launcher
        self.launcher_kind = launcher_kind
        self.views = views
        self.job_egress = job_egress
        self.slots = slots or FairSlots(sys.maxsize)
        self.control = control or ControlState()

    def _tool_context(self, event: ToolCallDispatched) -> ToolContext:
        return ToolContext(
            run_id=event.meta.run_id,
            tenant_id=event.meta.tenant_id,
            tool_call_id=event.tool_call_id,
            idempotency_key=event.idempotency_key,
            network=self.policies.for_tenant(event.meta.tenant_id).network,
        )

    async def _execute(self, event: ToolCallDispatched) -> ToolResult:
        tool = self.registry.get(event.tool)
        spec = tool.spec
        ctx = self._tool_context(event)
        args = json.loads(event.arguments_json)
        timeout_s = event.timeout_ms / 1000 if event.timeout_ms > 0 else spec.timeout_s
        for attempt in range(1, spec.attempts + 1):
            try:
                return await asyncio.wait_for(tool.run(args, ctx), timeout_s)
            except TimeoutError:
                error = ToolError(f"{event.tool} timed out after {timeout_s:g}s", retryable=True)
            except ToolError as exc:
                error = exc
            except Exception as exc:  # a tool bug must not take the worker down
                error = ToolError(f"{event.tool} failed: {type(exc).__name__}: {exc}")
            if not error.retryable or attempt == spec.attempts:
                suffix = f" (after {attempt} attempts)" if attempt > 1 else ""
                return ToolResult.failure(error.message + suffix)
            await asyncio.sleep(random.uniform(0, self.retry_base_delay_s * 2 ** (attempt - 1)))
        raise AssertionError("unreachable")

    async def _launch(self, event: ToolCallDispatched, tool: SandboxTool, ctx: HandlerContext) -> list[Event]:
        """Launch the call's job and say so; the job watcher records its result."""
        if self.views is not None:
            view = await self.views.for_handler(event, ctx)
            call = view.call(event.tool_call_id)
            if call is not None and call.status == "observed":
                return []  # a redelivered dispatch of a call whose job already ran
            if view.terminal:
                return self._observed(
                    event, ctx, ToolResult.failure(f"not launched: the run is {view.status}"), 0
                )
        if self.launcher is None:
            failure = ToolResult.failure(f"{event.tool} needs a sandbox launcher and none is configured")
            return self._observed(event, ctx, failure, 0)
        try:
            spec = tool.job_spec(json.loads(event.arguments_json), self._tool_context(event))
            if not self.job_egress:
                spec = dataclasses.replace(spec, allowed_hosts=())
        except (ToolError, ValueError) as exc:
            return self._observed(event, ctx, ToolResult.failure(f"{event.tool}: {exc}"), 0)
        try:
            await self.launcher.launch(spec)
        except LaunchError as exc:
            failure = ToolResult.failure(f"{event.tool} could not be launched: {exc}")
            return self._observed(event, ctx, failure, 0)
        except OSError as exc:  # the launcher's backend is unreachable for now
            raise RetryableHandlerError(f"launching {spec.job_id}: {exc}") from exc
        return [
            SandboxJobLaunched(
                meta=ctx.meta(),
                tool_call_id=event.tool_call_id,
                job_id=spec.job_id,
                launcher=self.launcher_kind,
                idempotency_key=event.idempotency_key,
            )
        ]

    async def handle(self, event: Event, ctx: HandlerContext) -> Sequence[Event]:
        assert isinstance(event, ToolCallDispatched)
        started = time.monotonic()
        switch = self.control.disabled(event.tool)
        if event.tool in self.registry and isinstance(tool := self.registry.get(event.tool), SandboxTool):
            if switch:
                return self._observed(event, ctx, ToolResult.failure(disabled_message(switch)), 0)
            return await self._launch(event, tool, ctx)
        if event.tool not in self.registry:
            result = ToolResult.failure(f"no tool named {event.tool!r} in this worker")
        else:
            spec = self.registry.get(event.tool).spec
            claim = await self.ledger.claim(event.idempotency_key, event.meta.run_id, event.tool)
            if claim.state == "completed" and claim.result_json is not None:
                result = _result_from_json(claim.result_json)
            elif claim.state == "started" and not (spec.idempotent or spec.safe_to_retry):
                result = ToolResult.failure(
                    f"{event.tool} was interrupted by a worker crash; its outcome is unknown and"
                    " it is not repeated because the tool is not idempotent"
                )
                await self.ledger.complete(event.idempotency_key, _result_json(result))
            elif switch:  # dispatched before the tool was disabled: it does not run
                result = ToolResult.failure(disabled_message(switch))
                await self.ledger.complete(event.idempotency_key, _result_json(result))
            else:
                async with self.slots.slot(event.meta.tenant_id):
                    result = await self._execute(event)
                await self.ledger.complete(event.idempotency_key, _result_json(result))
        return self._observed(event, ctx, result, int((time.monotonic() - started) * 1000))

    def _observed(
        self, event: ToolCallDispatched, ctx: HandlerContext, result: ToolResult, duration_ms: int
    ) -> list[Event]:
        data_json, truncated, handle = bounded(result.data, self.blobs)
        return [
            ObservationRecorded(
                meta=ctx.meta(),
                step=event.step,
                tool_call_id=event.tool_call_id,
                tool=event.tool,
                ok=result.ok,
                data_json=data_json,
                error=result.error,
                truncated=truncated,
                blob_handle=handle,
                duration_ms=duration_ms,
            ),
            BudgetCharged(meta=ctx.meta(), step=event.step, usage=Usage(), tool_calls=1, source="tool"),
        ]
