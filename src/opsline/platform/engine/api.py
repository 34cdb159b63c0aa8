"""Admin HTTP API for jobs, events and batches (permission ``jobs.admin``).

Tenant-scoped: an admin sees and acts only on their tenant's jobs; another
tenant's id answers 404 like a missing one.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from pydantic import Field

from opsline.db import BIGINT_MAX
from opsline.platform.auth.roles import JOBS_ADMIN
from opsline.platform.context import Context
from opsline.platform.engine import service
from opsline.platform.engine.schemas import BatchOut, CountOut, EventOut, JobDetail, JobOut
from opsline.platform.engine.service import Scope
from opsline.platform.http.deps import RequirePermission
from opsline.platform.http.inputs import OneLine, UtcDatetime, check_window
from opsline.platform.http.pagination import Page, PageDep, PageParams
from opsline.platform.http.routing import Route

router = APIRouter(tags=["jobs"], route_class=Route)
AdminCtx = Annotated[Context, RequirePermission(JOBS_ADMIN.name)]
JobId = Annotated[int, Path(ge=1, le=BIGINT_MAX, description="The job's id")]
JobState = Literal[
    "scheduled", "available", "running", "retryable", "succeeded", "dead", "cancelled"
]


class JobFilters(PageParams):
    state: JobState | None = None
    queue: OneLine | None = Field(default=None, max_length=50)
    name: OneLine | None = Field(default=None, max_length=200)


class EventFilters(PageParams):
    type: OneLine | None = Field(default=None, max_length=200)
    since: UtcDatetime | None = Field(default=None, description="From this time on (with offset)")
    until: UtcDatetime | None = Field(default=None, description="Before this time (exclusive)")


@router.get("/jobs", response_model=Page[JobOut], summary="List jobs, newest first")
def list_jobs(ctx: AdminCtx, filters: Annotated[JobFilters, Query()]) -> Page[JobOut]:
    return service.list_jobs(
        ctx.db,
        Scope.of(ctx),
        state=filters.state,
        queue=filters.queue,
        name=filters.name,
        cursor=filters.cursor,
        limit=filters.limit,
    )


@router.get("/jobs/dead", response_model=Page[JobOut], summary="List dead jobs")
def list_dead_jobs(ctx: AdminCtx, page: PageDep) -> Page[JobOut]:
    return service.list_jobs(
        ctx.db, Scope.of(ctx), state="dead", cursor=page.cursor, limit=page.limit
    )


@router.delete("/jobs/dead", response_model=CountOut, summary="Delete dead jobs")
def flush_dead_jobs(
    ctx: AdminCtx,
    older_than_hours: Annotated[float | None, Query(ge=0, le=24 * 3650)] = None,
) -> CountOut:
    older = timedelta(hours=older_than_hours) if older_than_hours is not None else None
    return CountOut(count=service.flush_dead(ctx.db, Scope.of(ctx), older_than=older))


@router.post("/jobs/retry-dead", response_model=CountOut, summary="Retry every dead job")
def retry_dead_jobs(ctx: AdminCtx) -> CountOut:
    return CountOut(count=service.retry_dead(ctx.db, Scope.of(ctx)))


@router.get("/jobs/{job_id}", response_model=JobDetail, summary="A job and its failed attempts")
def get_job(job_id: JobId, ctx: AdminCtx) -> JobDetail:
    return service.get_job(ctx.db, Scope.of(ctx), job_id)


@router.post("/jobs/{job_id}/retry", response_model=JobOut, summary="Retry a job now")
def retry_job(job_id: JobId, ctx: AdminCtx) -> JobOut:
    return service.retry_job(ctx.db, Scope.of(ctx), job_id)


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, summary="Cancel a job")
def cancel_job(job_id: JobId, ctx: AdminCtx) -> JobOut:
    return service.cancel_job(ctx.db, Scope.of(ctx), job_id)


@router.get("/events", response_model=Page[EventOut], summary="The event log, newest first")
def list_events(ctx: AdminCtx, filters: Annotated[EventFilters, Query()]) -> Page[EventOut]:
    check_window(filters.since, filters.until, names=("since", "until"))
    return service.list_events(
        ctx.db,
        Scope.of(ctx),
        type=filters.type,
        since=filters.since,
        until=filters.until,
        cursor=filters.cursor,
        limit=filters.limit,
    )


@router.get("/batches/{batch_id}", response_model=BatchOut, summary="A batch and its progress")
def get_batch(batch_id: uuid.UUID, ctx: AdminCtx) -> BatchOut:
    return service.get_batch_detail(ctx.db, Scope.of(ctx), batch_id)
