"""Admin use cases over jobs, events and batches: list, show, retry, cancel, flush.

Every function takes a :class:`Scope`: an admin's scope is their tenant (a job
of another tenant is "not found", exactly like a missing one); the operator's
CLI scope is every tenant. Each mutating function is one unit of work.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, select, true, update
from sqlalchemy.orm import Session

from opsline.db import Database, utcnow
from opsline.platform.context import Context
from opsline.platform.engine.batches import BatchCounts, get_batch, progress, record_finished
from opsline.platform.engine.enqueue import wake_workers
from opsline.platform.engine.errors import JobNotFound, JobStateConflict
from opsline.platform.engine.models import (
    Batch,
    EventRecord,
    Job,
    JobError,
    job_errors_table,
    jobs_table,
)
from opsline.platform.engine.schemas import BatchOut, EventOut, JobDetail, JobErrorOut, JobOut
from opsline.platform.http.pagination import Page, keyset_page

J = jobs_table.c
RETRYABLE = ("dead", "cancelled", "retryable", "scheduled")
CANCELLABLE = ("scheduled", "available", "retryable")


@dataclass(frozen=True, slots=True)
class Scope:
    tenant_id: uuid.UUID | None
    all_tenants: bool = False

    @classmethod
    def of(cls, ctx: Context) -> Scope:
        return cls(ctx.tenant_id)

    @classmethod
    def operator(cls) -> Scope:
        return cls(None, all_tenants=True)

    def where(self, column: Any) -> ColumnElement[bool]:
        return true() if self.all_tenants else column == self.tenant_id


def list_jobs(
    db: Database,
    scope: Scope,
    *,
    state: str | None = None,
    queue: str | None = None,
    name: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> Page[JobOut]:
    """Newest first, filtered by state, queue and name."""
    stmt = select(Job).where(scope.where(Job.tenant_id))
    for column, value in ((Job.state, state), (Job.queue, queue), (Job.name, name)):
        if value is not None:
            stmt = stmt.where(column == value)
    with db.read() as session:
        rows, next_cursor = keyset_page(
            stmt,
            columns=[Job.id],
            cursor=cursor,
            limit=limit,
            fetch=lambda s: session.scalars(s).all(),
            key=lambda job: [job.id],
            kinds=[int],
        )
        items = [JobOut.model_validate(job) for job in rows]
    return Page[JobOut](items=items, next_cursor=next_cursor)


def get_job(db: Database, scope: Scope, job_id: int) -> JobDetail:
    with db.read() as session:
        job = _scoped_job(session, scope, job_id)
        errors = session.scalars(
            select(JobError).where(JobError.job_id == job_id).order_by(JobError.attempt)
        ).all()
        out = JobOut.model_validate(job).model_dump()
        return JobDetail(**out, errors=[JobErrorOut.model_validate(e) for e in errors])


def _scoped_job(session: Session, scope: Scope, job_id: int, *, lock: bool = False) -> Job:
    """The job in scope; with ``lock`` its row is locked for the transaction (on
    PostgreSQL a worker's claim or ack of it waits, or is waited for and read)."""
    job = session.get(Job, job_id, with_for_update=lock)
    if job is None or not (scope.all_tenants or job.tenant_id == scope.tenant_id):
        raise JobNotFound(f"no job {job_id}")
    return job


def retry_job(db: Database, scope: Scope, job_id: int) -> JobOut:
    """Make a dead, cancelled or waiting job available now, with one more attempt allowed."""
    with db.unit_of_work() as uow:
        job = _scoped_job(uow.session, scope, job_id, lock=True)
        if job.state not in RETRYABLE:
            raise JobStateConflict(f"job {job_id} is {job.state}; only {RETRYABLE} can be retried")
        uow.session.execute(_retry_statement().where(J.id == job_id, J.state.in_(RETRYABLE)))
        wake_workers(uow)
    return get_job(db, scope, job_id)


def _retry_statement() -> Any:
    return update(jobs_table).values(
        state="available",
        run_at=utcnow(),
        finished_at=None,
        cancel_requested=False,
        vtime=0,
        max_attempts=J.max_attempts + (J.attempt >= J.max_attempts).cast(J.attempt.type),
    )


def retry_dead(db: Database, scope: Scope) -> int:
    """Retry every dead job in scope; returns how many."""
    with db.unit_of_work() as uow:
        result = uow.session.execute(
            _retry_statement().where(J.state == "dead", scope.where(J.tenant_id)).returning(J.id)
        )
        count = len(result.all())
        if count:
            wake_workers(uow)
    return count


def cancel_job(db: Database, scope: Scope, job_id: int) -> JobOut:
    """Cancel a pending job now; a running one gets the cooperative cancellation flag."""
    with db.unit_of_work() as uow:
        # Locked: a worker's claim between this read and the write below would
        # otherwise leave a running job uncancelled and its batch counting it so.
        job = _scoped_job(uow.session, scope, job_id, lock=True)
        if job.state in CANCELLABLE:
            now = utcnow()
            uow.session.execute(
                update(jobs_table)
                .where(J.id == job_id, J.state.in_(CANCELLABLE))
                .values(state="cancelled", finished_at=now, cancel_requested=True)
            )
            if job.batch_id is not None:
                record_finished(uow.session, {job.batch_id: BatchCounts(cancelled=1)}, now)
        elif job.state == "running":
            uow.session.execute(
                update(jobs_table)
                .where(J.id == job_id, J.state == "running")
                .values(cancel_requested=True)
            )
        else:
            raise JobStateConflict(f"job {job_id} already finished ({job.state})")
    return get_job(db, scope, job_id)


def flush_dead(db: Database, scope: Scope, *, older_than: timedelta | None = None) -> int:
    """Delete dead jobs (and their errors) in scope, optionally only those dead for a while."""
    conditions = [J.state == "dead", scope.where(J.tenant_id)]
    if older_than is not None:
        conditions.append(J.finished_at < utcnow() - older_than)
    with db.unit_of_work() as uow:
        ids = uow.session.execute(select(J.id).where(*conditions)).scalars().all()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            uow.session.execute(
                delete(job_errors_table).where(job_errors_table.c.job_id.in_(chunk))
            )
            uow.session.execute(delete(jobs_table).where(J.id.in_(chunk)))
    return len(ids)


def list_events(
    db: Database,
    scope: Scope,
    *,
    type: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> Page[EventOut]:
    """The event log, newest first, by type and time window."""
    stmt = select(EventRecord).where(scope.where(EventRecord.tenant_id))
    if type is not None:
        stmt = stmt.where(EventRecord.type == type)
    if since is not None:
        stmt = stmt.where(EventRecord.occurred_at >= since)
    if until is not None:
        stmt = stmt.where(EventRecord.occurred_at < until)
    with db.read() as session:
        rows, next_cursor = keyset_page(
            stmt,
            columns=[EventRecord.occurred_at, EventRecord.id],
            cursor=cursor,
            limit=limit,
            fetch=lambda s: session.scalars(s).all(),
            key=lambda e: [e.occurred_at, e.id],
            kinds=[datetime, uuid.UUID],
        )
        items = [EventOut.model_validate(e) for e in rows]
    return Page[EventOut](items=items, next_cursor=next_cursor)


def get_batch_detail(db: Database, scope: Scope, batch_id: uuid.UUID) -> BatchOut:
    with db.read() as session:
        batch: Batch
        if scope.all_tenants:
            found = session.get(Batch, batch_id)
            batch = found if found is not None else get_batch(session, batch_id, uuid.uuid4())
        else:
            batch = get_batch(session, batch_id, scope.tenant_id)
        data = {c: getattr(batch, c) for c in BatchOut.model_fields if c != "progress"}
        return BatchOut(**data, progress=progress(batch))
