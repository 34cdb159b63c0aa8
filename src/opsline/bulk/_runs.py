"""Run rows: creating them (the audit record), reading progress, finishing them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from opsline.bulk import events
from opsline.bulk._spec import Spec
from opsline.bulk.errors import RunNotFound
from opsline.bulk.models import BulkRun, runs_table
from opsline.bulk.schemas import FINAL_STATUSES, RunOut
from opsline.db import UnitOfWork, as_utc, new_id, utcnow
from opsline.platform.context import Context
from opsline.platform.engine import changes
from opsline.platform.engine.batches import cancel_batch
from opsline.platform.engine.events import publish

R = runs_table.c


def run_filters(tenant_id: uuid.UUID, **equals: str | None) -> list[ColumnElement[bool]]:
    """The tenant's runs with each given column equal to its value (None: any)."""
    return [R.tenant_id == tenant_id] + [
        R[column] == value for column, value in equals.items() if value is not None
    ]


def new_run(ctx: Context, spec: Spec, *, status: str, now: datetime) -> BulkRun:
    request = ctx.request
    return BulkRun(
        id=new_id(),
        tenant_id=ctx.tenant_id,
        kind="action",
        resource=spec.resource.name,
        action=spec.action,
        status=status,
        filters=spec.where,
        record_ids=[str(i) for i in spec.ids] if spec.ids is not None else None,
        params=spec.params,
        batch_size=spec.batch_size,
        undo_days=spec.undo_days if spec.plan.undoable else None,
        force=False,
        total=0,
        processed=0,
        failed=0,
        actor=ctx.principal.subject,
        actor_role=ctx.principal.role.value,
        user_id=ctx.principal.user_id,
        ip=request.ip,
        user_agent=(request.user_agent or "")[:400] or None,
        created_at=now,
        updated_at=now,
    )


def get_run(session: Session, tenant_id: uuid.UUID, run_id: uuid.UUID) -> BulkRun:
    """The run of this tenant; another tenant's is not found, exactly like a missing one."""
    run = session.get(BulkRun, run_id)
    if run is None or run.tenant_id != tenant_id:
        raise RunNotFound(f"no bulk run {run_id}")
    return run


def lock_run(session: Session, run_id: uuid.UUID) -> BulkRun | None:
    """Load with a row lock on PostgreSQL (SQLite's write lock is already held)."""
    return session.scalars(
        select(BulkRun)
        .where(BulkRun.id == run_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).first()


def count_active(session: Session, tenant_id: uuid.UUID) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(runs_table)
            .where(R.tenant_id == tenant_id, R.status == "running")
        )
        or 0
    )


def rate_and_eta(run: BulkRun, now: datetime | None = None) -> tuple[float | None, float | None]:
    if run.started_at is None:
        return None, None
    end = run.finished_at or run.updated_at if run.status in FINAL_STATUSES else now or utcnow()
    elapsed = (as_utc(end) - as_utc(run.started_at)).total_seconds()
    done = run.processed + run.failed
    if elapsed <= 0 or done == 0:
        return None, None
    rate = done / elapsed
    eta = None if run.status in FINAL_STATUSES else max(0.0, (run.total - done) / rate)
    return round(rate, 2), None if eta is None else round(eta, 2)


def to_out(run: BulkRun) -> RunOut:
    rate, eta = rate_and_eta(run)
    done = run.processed + run.failed
    return RunOut(
        id=run.id,
        tenant_id=run.tenant_id,
        kind=run.kind,
        status=run.status,
        resource=run.resource,
        action=run.action,
        total=run.total,
        processed=run.processed,
        failed=run.failed,
        progress=1.0 if run.total == 0 else min(1.0, done / run.total),
        rate=rate,
        eta_seconds=eta,
        where=run.filters,
        ids=run.record_ids,
        params=run.params,
        batch_size=run.batch_size,
        undo_of=run.undo_of,
        undone_by=run.undone_by,
        undo_expires_at=run.undo_expires_at,
        actor=run.actor,
        actor_role=run.actor_role,
        ip=run.ip,
        user_agent=run.user_agent,
        error=run.error,
        scheduled_at=run.scheduled_at,
        timezone=run.timezone,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
    )


def event_fields(run: BulkRun) -> dict[str, Any]:
    return {
        "tenant_id": run.tenant_id,
        "run_id": run.id,
        "resource": run.resource,
        "action": run.action,
        "total": run.total,
        "processed": run.processed,
        "failed": run.failed,
    }


def announce(uow: UnitOfWork, run: BulkRun) -> None:
    """Tell live subscribers (after commit) that the run moved."""
    changes.announce(
        uow,
        "bulk_run",
        run.tenant_id,
        {"id": str(run.id), "status": run.status, "processed": run.processed, "failed": run.failed},
    )


def cancel(uow: UnitOfWork, run: BulkRun, *, reason: str | None = None) -> None:
    """Cancel ``run`` (locked, scheduled or running): its pending chunks never start,
    a chunk committing later rolls back; ``reason`` (a stop, not a person's cancel)
    goes in its ``error``."""
    now = utcnow()
    run.status, run.finished_at, run.updated_at = "cancelled", now, now
    if reason is not None:
        run.error = reason
    if run.batch_id is not None:
        cancel_batch(uow, run.batch_id, run.tenant_id)
    publish(uow, events.BulkActionCancelled(**event_fields(run)))
    announce(uow, run)


def final_status(run: BulkRun, dead_chunks: int, unaccounted: int = 0) -> str:
    """``unaccounted``: records no chunk reported on; they count as failed."""
    failed = run.failed + unaccounted
    if run.processed == 0 and (failed > 0 or dead_chunks) and run.total > 0:
        return "failed"
    if failed or dead_chunks:
        return "completed_with_errors"
    return "completed"


def _final_error(run: BulkRun, dead_chunks: int) -> str | None:
    """What chunks said while running (a missing snapshot) and the dead chunks, if any."""
    dead = f"{dead_chunks} chunk(s) failed after every retry" if dead_chunks else None
    return "; ".join(e for e in (run.error, dead) if e) or None


def finish(uow: UnitOfWork, run: BulkRun, dead_chunks: int) -> None:
    """Give a running run its final status (guarded: a cancelled run stays cancelled)."""
    if run.status != "running":
        return
    now = utcnow()
    unaccounted = max(0, run.total - run.processed - run.failed)
    status = final_status(run, dead_chunks, unaccounted)
    error = _final_error(run, dead_chunks)
    moved = uow.session.execute(
        update(runs_table)
        .where(R.id == run.id, R.status == "running")
        .values(
            status=status,
            failed=R.failed + unaccounted,
            finished_at=now,
            updated_at=now,
            error=error,
        )
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        return
    uow.session.refresh(run)
    fields = event_fields(run)
    if run.kind == "undo" and status != "failed":
        assert run.undo_of is not None
        fields["run_id"] = run.undo_of
        publish(uow, events.BulkActionUndone(**fields, undo_run_id=run.id))
    elif status == "failed":
        publish(uow, events.BulkActionFailed(**fields, error=error))
    else:
        publish(uow, events.BulkActionCompleted(**fields, status=status))
    announce(uow, run)
