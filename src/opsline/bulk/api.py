"""HTTP endpoints of bulk actions under ``/api/v1/bulk`` (thin: one service call each)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import aclosing
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Header, Query, Request, status
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from opsline.bulk import service
from opsline.bulk._selection import OPS
from opsline.bulk.permissions import BULK_RUN
from opsline.bulk.schemas import (
    FINAL_STATUSES,
    ActionOut,
    BulkRequest,
    ExportFormat,
    FailureOut,
    PreviewOut,
    RescheduleRequest,
    ResourceOut,
    RunOut,
    RunStatus,
    ScheduleRequest,
    UndoRequest,
)
from opsline.platform.context import Context, Principal
from opsline.platform.engine.changes import channel, pubsub_for
from opsline.platform.http.deps import RequirePermission, principal_from_credentials
from opsline.platform.http.pagination import Page, PageDep
from opsline.platform.http.problems import Forbidden, Unauthorized
from opsline.platform.http.routing import Route
from opsline.platform.idempotency.http import REPLAY_HEADER, key_header, outcome_response
from opsline.platform.idempotency.service import check_key
from opsline.platform.realtime.readmission import Readmission
from opsline.platform.realtime.streams import sse_end
from opsline.platform.resources import all_resources
from opsline.platform.runtime import Runtime

router = APIRouter(prefix="/bulk", tags=["bulk"], route_class=Route)
BulkCtx = Annotated[Context, RequirePermission(BULK_RUN.name)]
# A resource or action name as declared (letters, digits, ``_ . : -``).
NameFilter = Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
POLL_SECONDS = 1.0
IdempotencyKeyHeader = Annotated[
    str | None,
    key_header(
        "Optional, unique per intended run; the same key and body replay the first "
        f"answer (header {REPLAY_HEADER}: true), another body is a 422"
    ),
]


def _limit(request: Request, ctx: Context) -> None:
    """Per-user and per-tenant rate of runs started (429 with Retry-After)."""
    limiter = request.app.state.runtime.rate_limiter
    settings = ctx.settings
    limiter.enforce(settings.bulk_rate_limit_user, "bulk", ctx.principal.subject, what="bulk runs")
    limiter.enforce(
        settings.bulk_rate_limit_tenant, "bulk-tenant", str(ctx.tenant_id), what="this tenant"
    )


@router.get("/resources", response_model=list[ResourceOut], summary="Targetable resources")
def list_resources(ctx: BulkCtx) -> list[ResourceOut]:
    """Every resource with its fields, operators and the actions this principal may run."""
    out = []
    for resource in all_resources():
        actions = [
            ActionOut(
                name=a,
                permission=resource.permission_for(a) or "",
                destructive=resource.is_destructive(a),
                undoable=resource.is_undoable(a),
            )
            for a in resource.actions()
        ]
        out.append(
            ResourceOut(
                name=resource.name,
                label=resource.label or resource.name,
                fields=[f.describe() for f in resource.fields],
                actions=actions,
                operators=list(OPS),
            )
        )
    return out


@router.get("/actions", response_model=list[ActionOut], summary="Every action of any resource")
def list_actions(ctx: BulkCtx) -> list[ActionOut]:
    seen: dict[str, ActionOut] = {}
    for resource in all_resources():
        for a in resource.actions():
            seen.setdefault(
                a,
                ActionOut(
                    name=a,
                    permission=resource.permission_for(a) or "",
                    destructive=resource.is_destructive(a),
                    undoable=resource.is_undoable(a),
                ),
            )
    return list(seen.values())


@router.post("/preview", response_model=PreviewOut, summary="Dry run: count, sample, warnings")
def preview(body: BulkRequest, ctx: BulkCtx) -> PreviewOut:
    return service.preview(ctx, body)


IDEMPOTENT_RESPONSES: dict[int | str, dict[str, object]] = {
    400: {"description": "Idempotency-Key malformed"},
    409: {
        "description": "Confirmation needed, the confirmation token already used (the run "
        "that used it named), or a request with this Idempotency-Key in flight"
    },
    422: {"description": "Invalid request, or the Idempotency-Key used with another body"},
    429: {"description": "Limit"},
}


@router.post(
    "/runs",
    response_model=RunOut,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Run a bulk action now",
    responses=IDEMPOTENT_RESPONSES,
)
def execute(
    body: BulkRequest,
    ctx: BulkCtx,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """A confirmation token confirms one run; send an ``Idempotency-Key`` to retry safely."""
    key = check_key(idempotency_key, required=False)
    _limit(request, ctx)
    return outcome_response(service.execute_once(ctx, body, idempotency_key=key), response)


@router.get("/runs", response_model=Page[RunOut], summary="Runs and undos (the audit log)")
def list_runs(
    ctx: BulkCtx,
    page: PageDep,
    status: RunStatus | None = None,
    action: NameFilter = None,
    resource: NameFilter = None,
    kind: Literal["action", "undo"] | None = None,
) -> Page[RunOut]:
    return service.list_runs(
        ctx,
        cursor=page.cursor,
        limit=page.limit,
        status=status,
        action=action,
        resource=resource,
        kind=kind,
    )


@router.get(
    "/audit/export",
    response_class=StreamingResponse,
    responses={200: {"content": {m.split(";")[0]: {} for m in service.MEDIA_TYPES.values()}}},
    summary="Download the audit log of runs and undos",
)
def export_audit(
    ctx: BulkCtx,
    format: ExportFormat = "csv",
    status: RunStatus | None = None,
    action: NameFilter = None,
    resource: NameFilter = None,
    kind: Literal["action", "undo"] | None = None,
) -> StreamingResponse:
    name, stream = service.export_audit(
        ctx, format, status=status, action=action, resource=resource, kind=kind
    )
    return _download(name, format, stream)


def _download(name: str, fmt: str, stream: Iterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        stream,
        media_type=service.MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get("/runs/{run_id}", response_model=RunOut)
def get_run(run_id: uuid.UUID, ctx: BulkCtx) -> RunOut:
    return service.get_run(ctx, run_id)


@router.get("/runs/{run_id}/failures", response_model=Page[FailureOut])
def list_failures(run_id: uuid.UUID, ctx: BulkCtx, page: PageDep) -> Page[FailureOut]:
    return service.list_failures(ctx, run_id, cursor=page.cursor, limit=page.limit)


@router.post("/runs/{run_id}/cancel", response_model=RunOut)
def cancel(run_id: uuid.UUID, ctx: BulkCtx) -> RunOut:
    return service.cancel_run(ctx, run_id)


@router.post(
    "/runs/{run_id}/undo",
    response_model=RunOut,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Undo a run from its snapshots (as a run of its own)",
)
def undo(
    run_id: uuid.UUID, ctx: BulkCtx, request: Request, body: UndoRequest | None = None
) -> RunOut:
    """Records changed since the run are skipped and reported unless ``force``; a
    record the database refuses to restore (its unique value taken since) fails
    with the reason while the rest are restored. 409 while the run or an undo of it
    is running, once it was undone, or after its undo data expired; an undo that was
    cancelled, failed or completed with errors may be followed by a new one, which
    restores only what no earlier undo restored."""
    _limit(request, ctx)
    return service.undo_run(ctx, run_id, force=body.force if body else False)


@router.get("/runs/{run_id}/undo", response_model=RunOut, summary="The undo of this run")
def undo_status(run_id: uuid.UUID, ctx: BulkCtx) -> RunOut:
    return service.get_undo(ctx, run_id)


@router.get(
    "/runs/{run_id}/export",
    response_class=StreamingResponse,
    responses={200: {"content": {m.split(";")[0]: {} for m in service.MEDIA_TYPES.values()}}},
    summary="Download the run's affected records",
)
def export(run_id: uuid.UUID, ctx: BulkCtx, format: ExportFormat = "csv") -> StreamingResponse:
    name, stream = service.export_run(ctx, run_id, format)
    return _download(name, format, stream)


@router.post(
    "/schedules",
    response_model=RunOut,
    status_code=status.HTTP_201_CREATED,
    summary="Schedule",
    responses=IDEMPOTENT_RESPONSES,
)
def schedule(
    body: ScheduleRequest,
    ctx: BulkCtx,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    key = check_key(idempotency_key, required=False)
    _limit(request, ctx)
    return outcome_response(service.schedule_once(ctx, body, idempotency_key=key), response)


@router.get("/schedules", response_model=Page[RunOut], summary="Scheduled runs")
def list_schedules(ctx: BulkCtx, page: PageDep) -> Page[RunOut]:
    return service.list_runs(ctx, cursor=page.cursor, limit=page.limit, status="scheduled")


@router.patch("/schedules/{run_id}", response_model=RunOut, summary="Reschedule")
def reschedule(run_id: uuid.UUID, body: RescheduleRequest, ctx: BulkCtx) -> RunOut:
    return service.reschedule(ctx, run_id, body)


@router.delete("/schedules/{run_id}", response_model=RunOut, summary="Cancel a scheduled run")
def unschedule(run_id: uuid.UUID, ctx: BulkCtx) -> RunOut:
    return service.cancel_run(ctx, run_id)


@router.get(
    "/runs/{run_id}/progress",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}, "application/json": {}}},
        429: {"description": "The principal holds its limit of live streams open"},
    },
    summary="Live progress (SSE) until the run ends; auth by header or ?access_token=",
    description="With `Accept: application/json` the current progress as one JSON document.",
)
async def progress(
    run_id: uuid.UUID,
    request: Request,
    access_token: Annotated[str | None, Query(max_length=4096)] = None,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header(alias="X-API-Key")] = None,
) -> Response:
    runtime: Runtime = request.app.state.runtime
    token = access_token
    if authorization and authorization.lower().startswith("bearer "):
        token = authorization[7:]
    ctx, admission = await run_in_threadpool(_admit, runtime, token, x_api_key)
    first = await run_in_threadpool(service.get_run, ctx, run_id)  # 404 before streaming
    accept = request.headers.get("accept", "")
    if "application/json" in accept and "text/event-stream" not in accept:
        return JSONResponse(first.model_dump(mode="json"))
    admission.refuse_if_full()
    return StreamingResponse(
        _progress_stream(ctx, admission, first, request),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _may_follow_runs(principal: Principal) -> uuid.UUID:
    """The tenant whose runs ``principal`` may follow; 403 without ``bulk.run``."""
    if not principal.has(BULK_RUN.name):
        raise Forbidden(f"your role '{principal.role}' lacks the permission 'bulk.run'")
    return principal.tenant_id


def _admit(
    runtime: Runtime, token: str | None, api_key: str | None
) -> tuple[Context, Readmission[uuid.UUID]]:
    """The stream's context and admission (blocking: one read); 401 or 403 if refused."""
    principal = principal_from_credentials(runtime, token=token, api_key=api_key)
    admission = Readmission(runtime, principal, _may_follow_runs, token=token, api_key=api_key)
    return Context(runtime.db, runtime.settings, principal), admission


async def _progress_stream(
    ctx: Context,
    admission: Readmission[uuid.UUID],
    run: RunOut,
    request: Request,
) -> AsyncIterator[bytes]:
    """The run's progress until it ends, in one of the principal's live-stream slots
    (``OPSLINE_LIVE_MAX_STREAMS_PER_USER``, shared with the order feeds). The slot is
    taken here, not before the response: only a started stream is sure to run its
    finally; streams that passed the check together and find none end at once.
    Like the order feeds, the credentials are checked again every
    ``live_heartbeat_seconds``: a run scheduled for later keeps its stream open
    only while they hold (``event: end`` with the 401 or 403 otherwise)."""
    if not admission.take_slot():
        yield sse_end(admission.too_many())
        return
    try:
        async with aclosing(_progress_events(ctx, admission, run, request)) as events:
            async for event in events:
                yield event
    except (Unauthorized, Forbidden) as problem:
        yield sse_end(problem)
    finally:
        admission.give_slot_back()


async def _progress_events(
    ctx: Context,
    admission: Readmission[uuid.UUID],
    run: RunOut,
    request: Request,
) -> AsyncGenerator[bytes, None]:
    pubsub = pubsub_for(ctx.db.engine)
    subscription = (
        await run_in_threadpool(pubsub.subscribe, channel(ctx.tenant_id)) if pubsub else None
    )
    try:
        seq = 0
        while True:
            seq += 1
            data = orjson.dumps(run.model_dump(mode="json"))
            yield b"id: %d\nevent: progress\ndata: %s\n\n" % (seq, data)
            if run.status in FINAL_STATUSES or await request.is_disconnected():
                return
            await _wait_for_change(subscription, str(run.id))
            await admission.check()
            run = await run_in_threadpool(service.get_run, ctx, run.id)
    finally:
        if subscription is not None:
            subscription.close()


async def _wait_for_change(subscription: object, run_id: str) -> None:
    """Until a message about this run arrives, or POLL_SECONDS pass (the database is the truth)."""
    waited = 0.0
    while waited < POLL_SECONDS:
        message = subscription.get(timeout=0) if subscription is not None else None  # type: ignore[attr-defined]
        if message and message.get("kind") == "bulk_run" and message.get("id") == run_id:
            return
        if message is None:
            await asyncio.sleep(0.05)
            waited += 0.05
