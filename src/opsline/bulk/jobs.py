"""Jobs of bulk actions: apply or undo one chunk, finish a run, start a scheduled run, purge.

Chunk jobs are idempotent: the chunk's row in ``bulk_chunks`` is written in the
same transaction as its changes and snapshot, so a redelivered chunk (a worker
killed after commit, before its ack) finds it and does nothing; a chunk killed
before commit left nothing behind and runs again from the original data. A
chunk whose run is no longer running (cancelled) changes nothing, and one that
finds its run cancelled at commit time rolls back.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import ColumnElement, Select, delete, func, literal, select, update
from sqlalchemy.orm import Session

from opsline.bulk import _crypto, _runs, _sql, _start, events
from opsline.bulk._apply import ChunkRef, Outcome, apply_chunk
from opsline.bulk._plan import build_plan
from opsline.bulk._undo import undo_chunk as undo_one_chunk
from opsline.bulk.models import (
    BulkRun,
    chunks_table,
    items_table,
    runs_table,
    snapshots_table,
)
from opsline.bulk.schemas import ACTIVE_STATUSES
from opsline.db import UnitOfWork, as_utc, utcnow
from opsline.platform.auth.roles import Role
from opsline.platform.context import Principal
from opsline.platform.engine.context import JobContext
from opsline.platform.engine.enqueue import enqueue
from opsline.platform.engine.events import publish
from opsline.platform.engine.models import Batch
from opsline.platform.engine.registry import job
from opsline.platform.engine.scheduler import periodic
from opsline.platform.resources import Resource, find_resource

log = structlog.get_logger(__name__)
C = chunks_table.c
R = runs_table.c
S = snapshots_table.c
DEFER_SECONDS = 5.0
"""Delay before a scheduled run held back by the concurrent-runs limit tries again."""


class _RunGone(Exception):
    """The run stopped running while the chunk worked: roll the chunk back."""


def _claim(uow: UnitOfWork, run_id: uuid.UUID, chunk: int) -> bool:
    seen = uow.session.execute(select(C.chunk).where(C.run_id == run_id, C.chunk == chunk)).first()
    if seen is not None:
        return False
    uow.session.execute(
        chunks_table.insert().values(
            run_id=run_id, chunk=chunk, processed=0, failed=0, applied_at=utcnow()
        )
    )
    return True


def _record(uow: UnitOfWork, run: BulkRun, chunk: int, outcome: Outcome) -> None:
    now = utcnow()
    uow.session.execute(
        update(chunks_table)
        .where(C.run_id == run.id, C.chunk == chunk)
        .values(processed=outcome.processed, failed=outcome.failed)
    )
    values: dict[str, object] = {
        "processed": R.processed + outcome.processed,
        "failed": R.failed + outcome.failed,
        "updated_at": now,
    }
    if outcome.error:
        values["error"] = _appended_error(outcome.error)
    moved = uow.session.execute(
        update(runs_table)
        .where(R.id == run.id, R.status == "running")
        .values(values)
        .returning(R.processed, R.failed)
    ).first()
    if moved is None:
        raise _RunGone
    run.processed, run.failed = moved.processed, moved.failed
    publish(uow, events.BulkActionProgress(**_runs.event_fields(run)))
    _runs.announce(uow, run)


def _appended_error(note: str) -> ColumnElement[str]:
    """The run's ``error`` with ``note`` added (chunks of one run may each add one)."""
    return func.coalesce(R.error + literal("; ") + literal(note), literal(note))


def _author_now(uow: UnitOfWork, run: BulkRun, resource: Resource) -> Principal | None:
    """Who a chunk of ``run`` acts as, if its author still may run it; else None.

    Checked before every chunk, as a scheduled run is when due: an author removed
    from the tenant, an API key revoked or a role that lost the permission stops
    the run (cancelled, the reason in its ``error``; the chunks applied so far stay,
    and may be undone). A run the author still may run acts throughout with the
    role it started with: a run demoting every owner, its author among them, is
    judged as one decision, not by whichever chunk happened to demote the author.
    """
    try:
        _start.author_role(uow.session, run, resource, refused="stopped")
    except _start.AuthorRefused as refused:
        _stop(uow, run.id, str(refused))
        return None
    return Principal(tenant_id=run.tenant_id, role=Role(run.actor_role), user_id=run.user_id)


def _stop(uow: UnitOfWork, run_id: uuid.UUID, reason: str) -> None:
    """Stop a running run whose author may no longer run it (as a cancel does)."""
    run = _runs.lock_run(uow.session, run_id)
    if run is None or run.status != "running":
        return
    log.warning("bulk_run_stopped", run_id=str(run.id), reason=reason)
    _runs.cancel(uow, run, reason=reason)


@job("bulk.apply_chunk", max_attempts=5)
def apply_chunk_job(ctx: JobContext, run_id: uuid.UUID, chunk: int) -> None:
    """Apply one chunk of a run (no-op when already applied or the run stopped)."""
    key = _crypto.undo_key(ctx.settings)
    try:
        with ctx.unit_of_work() as uow:
            run = uow.session.get(BulkRun, run_id)
            if run is None or run.status != "running":
                return
            resource = find_resource(run.resource)
            if resource is None:
                raise LookupError(f"resource {run.resource!r} is no longer registered")
            principal = _author_now(uow, run, resource)
            if principal is None or not _claim(uow, run_id, chunk):
                return
            # Counters move only by SQL increments; this copy must never be flushed back.
            uow.session.expunge(run)
            assert run.started_at is not None
            plan = build_plan(resource, run.action, run.params, now=as_utc(run.started_at))
            ref = ChunkRef(run.id, run.tenant_id, chunk)
            outcome = apply_chunk(uow.session, plan, ref, principal, key, run.undo_expires_at)
            _record(uow, run, chunk, outcome)
    except _RunGone:
        log.info("bulk_chunk_rolled_back", run_id=str(run_id), chunk=chunk)


@job("bulk.undo_chunk", max_attempts=5)
def undo_chunk_job(ctx: JobContext, run_id: uuid.UUID, chunk: int) -> None:
    """Undo one chunk of the original run of undo run ``run_id`` (idempotent like apply).

    Idempotent across undo runs too, by record: the records of the chunk an
    earlier undo of the same run (cancelled, failed, with errors) restored are left alone
    (a chunk with none left was not queued; a stray delivery of it restores
    nothing and counts nothing).
    """
    key = _crypto.undo_key(ctx.settings)
    try:
        with ctx.unit_of_work() as uow:
            run = uow.session.get(BulkRun, run_id)
            if run is None or run.status != "running" or run.undo_of is None:
                return
            resource = find_resource(run.resource)
            if resource is None:
                raise LookupError(f"resource {run.resource!r} is no longer registered")
            original = ChunkRef(run.undo_of, run.tenant_id, chunk)
            if _author_now(uow, run, resource) is None or not _claim(uow, run_id, chunk):
                return
            # Counters move only by SQL increments; this copy must never be flushed back.
            uow.session.expunge(run)
            mine = ChunkRef(run.id, run.tenant_id, chunk)
            outcome = undo_one_chunk(uow.session, resource, original, mine, key, force=run.force)
            _record(uow, run, chunk, outcome)
    except _RunGone:
        log.info("bulk_undo_chunk_rolled_back", run_id=str(run_id), chunk=chunk)


@job("bulk.finish_run", max_attempts=20)
def finish_run(ctx: JobContext, batch_id: uuid.UUID, run_id: uuid.UUID) -> None:
    """The batch's completion callback: the final status (never over a cancelled run)."""
    with ctx.unit_of_work() as uow:
        run = _runs.lock_run(uow.session, run_id)
        if run is None or run.status != "running":
            return
        batch = uow.session.get(Batch, batch_id)
        dead = batch.failed if batch is not None else 0
        _runs.finish(uow, run, dead)


@job("bulk.start_scheduled", max_attempts=5)
def start_scheduled(ctx: JobContext, run_id: uuid.UUID, at: datetime) -> None:
    """Start a scheduled run when due; a job for an older time (rescheduled) does nothing.

    Its author's permission is checked again, against who they are now
    (:func:`_start.author_role`): a removed member, a revoked API key or a
    role without ``bulk.run`` or the action's permission fails the run with
    the reason in its ``error``, changing nothing (``bulk.action_failed``).
    The run then acts with the role they hold now (``actor_role``).

    The tenant's concurrent-runs limit holds as for direct runs: when the
    tenant already has ``bulk_max_concurrent_runs`` running, the run stays
    ``scheduled`` and this job is queued again ``DEFER_SECONDS`` later (same
    ``at``, so a reschedule meanwhile still makes it a no-op).
    """
    with ctx.unit_of_work() as uow:
        run = _runs.lock_run(uow.session, run_id)
        if run is None or run.status != "scheduled" or run.scheduled_at is None:
            return
        if abs((as_utc(run.scheduled_at) - as_utc(at)).total_seconds()) > 0.001:
            return
        resource = find_resource(run.resource)
        try:
            role = _start.author_role(uow.session, run, resource) if resource is not None else None
        except _start.AuthorRefused as refused:
            _refuse(uow, run, str(refused))
            return
        if _runs.count_active(uow.session, run.tenant_id) >= ctx.settings.bulk_max_concurrent_runs:
            _defer(uow, run, at)
            return
        now = utcnow()
        run.started_at, run.updated_at = now, now
        if resource is None or role is None:
            run.status, run.finished_at, run.error = "failed", now, "resource not registered"
            return
        run.actor_role = role.value
        try:
            with uow.session.begin_nested():
                _start.start_run(uow, run, resource, ctx.settings)
        except Exception as exc:
            run.status, run.finished_at = "failed", now
            run.error = getattr(exc, "detail", None) or f"{type(exc).__name__}: {exc}"[:500]
            publish(uow, events.BulkActionFailed(**_runs.event_fields(run), error=run.error))


def _refuse(uow: UnitOfWork, run: BulkRun, reason: str) -> None:
    """Fail a scheduled run that never started: its author may no longer run it."""
    log.warning("bulk_scheduled_run_refused", run_id=str(run.id), reason=reason)
    now = utcnow()
    run.status, run.error, run.finished_at, run.updated_at = "failed", reason, now, now
    publish(uow, events.BulkActionFailed(**_runs.event_fields(run), error=reason))
    _runs.announce(uow, run)


def _defer(uow: UnitOfWork, run: BulkRun, at: datetime) -> None:
    """Try the scheduled start again later: the tenant is at its concurrent-runs limit."""
    log.info("bulk_scheduled_run_deferred", run_id=str(run.id), delay_s=DEFER_SECONDS)
    enqueue(
        uow,
        start_scheduled,
        {"run_id": run.id, "at": at},
        tenant_id=run.tenant_id,
        delay=DEFER_SECONDS,
    )


def _undo_pending(run_id: ColumnElement[uuid.UUID] | uuid.UUID) -> Select[Any]:
    """A run whose undo (its ``undone_by``) is queued or running: its undo data is in use."""
    undo = runs_table.alias("pending_undo")
    original = runs_table.alias("undone_run")
    return (
        select(literal(1))
        .select_from(original)
        .join(undo, undo.c.id == original.c.undone_by)
        .where(original.c.id == run_id, undo.c.status.in_(ACTIVE_STATUSES))
    )


def _purge_run(session: Session, run_id: uuid.UUID, now: datetime) -> int:
    """Purge one expired run's undo data unless its undo is pending; returns snapshots.

    The run's row is locked first, as :func:`service.undo_run` locks it: an undo
    starting meanwhile either commits first (and is seen here, in a statement
    after the lock) or finds the undo data purged (409).
    """
    locked = session.execute(
        select(R.id)
        .where(R.id == run_id, R.undo_expires_at.is_not(None), R.undo_expires_at <= now)
        .with_for_update()
    ).first()
    if locked is None or session.execute(_undo_pending(run_id)).first() is not None:
        return 0
    removed = _sql.rowcount(session.execute(delete(snapshots_table).where(S.run_id == run_id)))
    session.execute(delete(items_table).where(items_table.c.run_id == run_id))
    session.execute(delete(chunks_table).where(C.run_id == run_id))
    session.execute(update(runs_table).where(R.id == run_id).values(undo_expires_at=None))
    return removed


@periodic("17 * * * *")
@job("bulk.purge_expired", max_attempts=3)
def purge_expired(ctx: JobContext) -> int:
    """Delete undo snapshots past their expiry, with the run's selection and chunk marks.

    A run whose undo is queued or running keeps them until that undo ends (the
    next purge takes them). Returns how many snapshots were deleted.
    """
    now = utcnow()
    with ctx.unit_of_work() as uow:
        expired = uow.session.scalars(
            select(R.id).where(
                R.undo_expires_at.is_not(None),
                R.undo_expires_at <= now,
                ~_undo_pending(R.id).exists(),
            )
        ).all()
        removed = sum(_purge_run(uow.session, run_id, now) for run_id in expired)
        stray = delete(snapshots_table).where(
            S.expires_at <= now, ~_undo_pending(S.run_id).exists()
        )
        removed += _sql.rowcount(uow.session.execute(stray))
    return removed
