"""The HTTP API and the web console, as one FastAPI application.

Every request carries `Authorization: Bearer <token>`; the token names a tenant and a
role. Reads come from the projections (run state, episodic events, approvals inbox),
always queried with the caller's tenant, so another tenant's runs are simply not found.
Actions go through `agentstream.interventions` (shared with the CLI), which checks the
run's tenant against the log before appending anything. Submissions go to the tasks
topic, where the intake turns them into runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from agentstream.config import Settings
from agentstream.gateway.models import (
    AnswerIn,
    Appended,
    ApprovalList,
    ApprovalOut,
    CancelIn,
    DecisionIn,
    ErrorBody,
    EventList,
    EventOut,
    GoalIn,
    Me,
    QueueOut,
    RunAccepted,
    RunDetail,
    RunList,
    RunSubmission,
    RunSummary,
)
from agentstream.gateway.tokens import Principal, Role, TokenBook
from agentstream.interventions import InterventionError, Interventions
from agentstream.runtime import TERMINAL_TYPES, AgentRuntime
from handlers.intake import run_id_for
from projections.approvals import ApprovalInbox
from projections.builtin import builtin_projections
from projections.episodic import Episodes
from projections.run_state import RunStates
from projections.run_view import RunViews
from projections.stores import ProjectionStore, open_store
from streams.backends import open_log
from streams.codec import EventCodec
from streams.envelope import new_run_id, root_meta
from streams.events import Budget, Event, TaskSubmitted
from streams.log import EventLog
from streams.registry import SchemaRegistry, open_registry

STATIC = Path(__file__).parent / "static"
PRODUCER = "gateway"
_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")


class ApiError(Exception):
    """An error answered as `{"error": {"code", "message"}}` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


_INTERVENTION_STATUS = {"not_found": 404, "conflict": 409, "invalid": 400}


@dataclass
class GatewayBackends:
    """What the gateway reads and writes: the log, codec and the views' store.

    With a hosted `AgentRuntime` (`agentstream gateway --workers`) they are the runtime's
    own, and its projector keeps the views current; otherwise the gateway opens them from
    the settings and another process (`agentstream serve`) runs the workers and projector.
    """

    settings: Settings
    runtime_factory: Callable[[], AgentRuntime] | None = None
    poll_s: float = 0.25
    heartbeat_s: float = 15.0
    runtime: AgentRuntime | None = None
    log: EventLog = field(init=False)
    codec: EventCodec = field(init=False)
    store: ProjectionStore = field(init=False)
    views: RunViews = field(init=False)
    _registry: SchemaRegistry | None = None

    async def open(self) -> None:
        if self.runtime_factory is not None:
            self.runtime = self.runtime_factory()
            await self.runtime.start()
            self.log, self.codec, self.store = self.runtime.log, self.runtime.codec, self.runtime.store
            self.views = self.runtime.views
            return
        self.log = open_log(self.settings.log_url)
        self._registry = open_registry(self.settings.registry_url)
        self.codec = EventCodec(self._registry)
        self.store = open_store(self.settings.store_url or f"sqlite://{self.settings.home}/views.db")
        for spec in self.settings.topics.specs():
            await self.log.create_topic(spec)
        for projection in builtin_projections():
            await self.store.register(projection.schema)
        self.views = RunViews(self.log, self.codec, self.settings.topics, cache_runs=1024, store=self.store)

    async def close(self) -> None:
        if self.runtime is not None:
            await self.runtime.stop()
            return
        await self.store.close()
        await self.log.close()
        if self._registry is not None:
            await self._registry.aclose()

    def interventions(self) -> Interventions:
        return Interventions(
            self.log, self.codec, self.settings.topics, self.store, producer=PRODUCER, views=self.views
        )


def _error(status: int, code: str, message: str, details: list[dict[str, Any]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status)


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No token, or an unknown one."},
    403: {"model": ErrorBody, "description": "The token's role may not do this."},
    422: {"model": ErrorBody, "description": "The request is malformed."},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such run (or approval) in the caller's tenant."}
}
_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorBody, "description": "The run or approval is not in a state that allows this."}
}


_bearer = HTTPBearer(auto_error=False, description="An API token from `agentstream issue-token`.")


async def _principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    if credentials is None:
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <token>")
    tokens: TokenBook = request.app.state.tokens
    found = tokens.principal(credentials.credentials)
    if found is None:
        raise ApiError(401, "unauthorized", "unknown token")
    return found


def _role(*allowed: Role) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(who: Annotated[Principal, Depends(_principal)]) -> Principal:
        if who.role not in allowed:
            names = " or ".join(r.value for r in allowed)
            raise ApiError(403, "forbidden", f"this needs the {names} role; the token is {who.role.value}")
        return who

    return check


Reader = Annotated[Principal, Depends(_principal)]
Submitter = Annotated[Principal, Depends(_role(Role.SUBMITTER))]
Reviewer = Annotated[Principal, Depends(_role(Role.REVIEWER))]


def create_app(backends: GatewayBackends, tokens: TokenBook) -> FastAPI:
    """The gateway application; `backends` are opened and closed with it."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await backends.open()
        try:
            yield
        finally:
            await backends.close()

    app = FastAPI(
        title="agentstream gateway",
        version="1",
        summary="Submit and follow agent runs, decide approvals, answer agents, steer runs.",
        lifespan=lifespan,
        responses=_ERRORS,
    )
    app.state.tokens = tokens

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message)

    @app.exception_handler(InterventionError)
    async def intervention_error(_: Request, exc: InterventionError) -> JSONResponse:
        code = exc.code if exc.code != "invalid" else "invalid_request"
        return _error(_INTERVENTION_STATUS[exc.code], code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in exc.errors()
        ]
        return _error(422, "invalid_request", "the request does not match the API", details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail))

    async def run_state(who: Principal, run_id: str) -> Any:
        state = await RunStates(backends.store).get(who.tenant, run_id)
        if state is None:
            raise ApiError(404, "not_found", f"no run {run_id}")
        return state

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/console/")

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        if backends.runtime is not None:
            backends.runtime.check_health()
        return {"status": "ok"}

    @app.get("/v1/me", tags=["auth"])
    async def me(who: Reader) -> Me:
        """The token's owner, tenant and role."""
        return Me(name=who.name, tenant=who.tenant, role=who.role.value)

    @app.post(
        "/v1/runs",
        tags=["runs"],
        status_code=202,
        responses={200: {"model": RunAccepted, "description": "The key named an existing run."}, **_CONFLICT},
    )
    async def submit_run(
        body: RunSubmission,
        who: Submitter,
        idempotency_key: Annotated[
            str | None,
            Header(description="Same (tenant, key) → same run: retries never start a second run."),
        ] = None,
    ) -> Any:
        """Submit a task. It goes to the tasks topic; the intake starts the run."""
        if idempotency_key is not None and not _KEY.match(idempotency_key):
            raise ApiError(422, "invalid_request", "Idempotency-Key must be 1-200 printable ASCII characters")
        event_id = new_run_id()
        run_id = run_id_for(who.tenant, idempotency_key, event_id)
        if idempotency_key is not None:
            existing = await backends.views.view(run_id, tenant=who.tenant)
            if existing.events:
                if existing.goal_history[:1] != [body.goal]:
                    raise ApiError(409, "conflict", "this Idempotency-Key was used for a different task")
                return JSONResponse(
                    RunAccepted(run_id=run_id, status=existing.status, duplicate=True).model_dump(),
                    status_code=200,
                )
        meta = root_meta(run_id, who.tenant, PRODUCER).model_copy(update={"event_id": event_id})
        deadline = datetime.now(UTC) + timedelta(seconds=body.timeout_s) if body.timeout_s else None
        task = TaskSubmitted(
            meta=meta,
            goal=body.goal,
            model=body.model,
            fallback_model=body.fallback_model,
            budget=Budget(
                max_steps=body.max_steps, max_tokens=body.max_tokens, max_usd=body.max_usd, deadline=deadline
            ),
            tools=body.tools,
            upstream_idempotency_key=idempotency_key,
            submitted_by=who.name,
            labels=body.labels,
        )
        await backends.interventions().submit(task)
        return RunAccepted(run_id=run_id, status="accepted", duplicate=False)

    @app.get("/v1/runs", tags=["runs"])
    async def list_runs(
        who: Reader,
        status: Annotated[str | None, Query(description="running, completed, failed, ...")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        before: Annotated[datetime | None, Query(description="Only runs created before this.")] = None,
    ) -> RunList:
        """The tenant's runs, newest first (`status=queued`: the runs waiting for a slot of
        the tenant's concurrency cap)."""
        found = await RunStates(backends.store).list(who.tenant, status=status, limit=limit, before=before)
        runs = [RunSummary.of(s) for s in found]
        return RunList(runs=runs, next_before=runs[-1].created_at if len(runs) == limit else None)

    @app.get("/v1/runs/{run_id}", tags=["runs"], responses=_NOT_FOUND)
    async def get_run(run_id: str, who: Reader) -> RunDetail:
        """One run with its timeline: thoughts, tool calls with arguments, observations, costs."""
        state = await run_state(who, run_id)
        states = RunStates(backends.store)
        view = await states.view(who.tenant, run_id)
        return RunDetail.of_view(state, view, queue_position=await states.queue_position(state))

    @app.get("/v1/queue", tags=["runs"])
    async def queue(who: Reader) -> QueueOut:
        """The tenant's queue: runs waiting for a slot of its concurrency cap, and runs holding one."""
        depth = await RunStates(backends.store).queue(who.tenant)
        runtime = backends.runtime
        cap = runtime.policies.for_tenant(who.tenant).max_concurrent_runs if runtime is not None else None
        return QueueOut(
            tenant=who.tenant, queued=depth.queued, in_flight=depth.in_flight, max_concurrent_runs=cap
        )

    @app.get("/v1/runs/{run_id}/events", tags=["events"], responses=_NOT_FOUND)
    async def list_events(
        run_id: str,
        who: Reader,
        after: Annotated[int | None, Query(description="Only events after this log offset.")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 500,
    ) -> EventList:
        """The run's events in log order, decoded."""
        await run_state(who, run_id)
        found = await Episodes(backends.store).by_run(who.tenant, run_id, after_offset=after, limit=limit)
        events = [EventOut.of(e) for e in found]
        return EventList(events=events, next_after=events[-1].offset if len(events) == limit else None)

    @app.get(
        "/v1/runs/{run_id}/events/stream",
        tags=["events"],
        responses={
            200: {
                "content": {"text/event-stream": {}},
                "description": "Server-sent events: `id` is the log offset, `event` the type, "
                "`data` the event as in /events. Ends after the run's terminal event. "
                "Resume with Last-Event-ID.",
            },
            **_NOT_FOUND,
        },
    )
    async def stream_events(
        run_id: str,
        who: Reader,
        after: Annotated[int | None, Query(description="Start after this log offset.")] = None,
        last_event_id: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> StreamingResponse:
        """The run's events as they are appended, as server-sent events."""
        await run_state(who, run_id)
        if last_event_id is not None and last_event_id.isdigit():
            after = int(last_event_id)
        return StreamingResponse(
            _follow(backends, who.tenant, run_id, after),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.post("/v1/runs/{run_id}/cancel", tags=["actions"], status_code=202, responses=_NOT_FOUND | _CONFLICT)
    async def cancel_run(run_id: str, body: CancelIn, who: Submitter) -> Appended:
        """Cancel a run that has not ended."""
        event = await backends.interventions().cancel(run_id, who.name, body.reason, tenant=who.tenant)
        return _appended(event)

    @app.post("/v1/runs/{run_id}/goal", tags=["actions"], status_code=202, responses=_NOT_FOUND | _CONFLICT)
    async def change_goal(run_id: str, body: GoalIn, who: Submitter) -> Appended:
        """Give a running agent a new goal; it plans for it from its next step."""
        event = await backends.interventions().change_goal(run_id, body.goal, who.name, tenant=who.tenant)
        return _appended(event)

    @app.post(
        "/v1/runs/{run_id}/answers", tags=["actions"], status_code=202, responses=_NOT_FOUND | _CONFLICT
    )
    async def answer(run_id: str, body: AnswerIn, who: Reviewer) -> Appended:
        """Answer the agent's open `ask_human` question."""
        event = await backends.interventions().answer(
            run_id, body.answer, who.name, tool_call_id=body.tool_call_id, tenant=who.tenant
        )
        return _appended(event)

    @app.get("/v1/approvals", tags=["approvals"])
    async def list_approvals(
        who: Reader,
        status: Annotated[
            str, Query(pattern="^(pending|approved|denied|expired|all)$", description="`all` for every one.")
        ] = "pending",
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> ApprovalList:
        """The tenant's approval requests, the longest-waiting first."""
        found = await ApprovalInbox(backends.store).list(
            who.tenant, None if status == "all" else status, limit=limit
        )
        return ApprovalList(approvals=[ApprovalOut.of(a) for a in found])

    @app.post(
        "/v1/approvals/{approval_id}/decision",
        tags=["approvals"],
        status_code=202,
        responses=_NOT_FOUND | _CONFLICT,
    )
    async def decide(approval_id: str, body: DecisionIn, who: Reviewer) -> Appended:
        """Approve or deny a pending request; the first decision is final."""
        event = await backends.interventions().decide(
            who.tenant,
            approval_id,
            body.decision,
            who.name,
            body.comment,
            arguments_digest=body.arguments_digest,
        )
        return _appended(event)

    app.mount("/console", StaticFiles(directory=STATIC, html=True), name="console")
    return app


def _appended(event: Event) -> Appended:
    return Appended(run_id=event.meta.run_id, event_id=event.meta.event_id, type=event.type_name)


def _sse(event: EventOut) -> str:
    return f"id: {event.offset}\nevent: {event.type}\ndata: {json.dumps(event.model_dump(mode='json'))}\n\n"


async def _follow(
    backends: GatewayBackends, tenant: str, run_id: str, after: int | None
) -> AsyncIterator[str]:
    """Poll the episodic view for the run's new events until its terminal one."""
    episodes = Episodes(backends.store)
    loop = asyncio.get_running_loop()
    quiet_since = loop.time()
    yield "retry: 1000\n\n"
    while True:
        found = await episodes.by_run(tenant, run_id, after_offset=after, limit=500)
        for episode in found:
            after = episode.offset
            yield _sse(EventOut.of(episode))
            if episode.type in TERMINAL_TYPES:
                return
        if found:
            quiet_since = loop.time()
            continue
        if loop.time() - quiet_since >= backends.heartbeat_s:
            quiet_since = loop.time()
            yield ": keep-alive\n\n"
        await asyncio.sleep(backends.poll_s)
