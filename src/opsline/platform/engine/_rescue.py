"""Rescuing jobs whose worker died: any worker runs this every half lease.

A running job whose lease expired (its worker stopped heartbeating: killed,
frozen, cut off from the database) goes back to ``available`` with a
:class:`WorkerLost` error recorded for that attempt, so it runs again and its
history shows why; only when that was its last attempt is it ``dead``. The
update is fenced on (id, attempt, still running, lease still expired), so a
worker that renews its lease at the same moment wins.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Connection, insert, select, update

from opsline.db import Database, utcnow
from opsline.platform.engine._engines import hot_engine
from opsline.platform.engine.batches import BatchCounts, record_finished
from opsline.platform.engine.metrics import JOBS_RESCUED
from opsline.platform.engine.models import job_errors_table, jobs_table, state_is

J = jobs_table.c
log = structlog.get_logger("opsline.engine")


def rescue_expired(db: Database, *, now: datetime | None = None, limit: int = 500) -> int:
    """Re-queue up to ``limit`` jobs with an expired lease; returns how many."""
    now = now or utcnow()
    rescued = 0
    dead: dict[uuid.UUID, int] = defaultdict(int)
    with hot_engine(db).begin() as conn:
        rows = conn.execute(
            select(J.id, J.attempt, J.max_attempts, J.tenant_id, J.batch_id, J.lease_owner)
            .where(state_is(J.state, "running"), J.lease_expires_at < now)
            .order_by(J.lease_expires_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        for row in rows:
            is_dead = row.attempt >= row.max_attempts
            if not _rescue_one(conn, row, is_dead, now):
                continue
            rescued += 1
            if is_dead and row.batch_id is not None:
                dead[row.batch_id] += 1
        record_finished(conn, {b: BatchCounts(failed=n) for b, n in dead.items()}, now)
    if rescued:
        JOBS_RESCUED.inc(rescued)
        log.warning("jobs_rescued", count=rescued)
    return rescued


def _rescue_one(conn: Connection, row: Any, is_dead: bool, now: datetime) -> bool:
    """Fenced: only if still running on that attempt with the lease still expired."""
    message = f"worker {row.lease_owner} stopped renewing its lease"
    result = conn.execute(
        update(jobs_table)
        .where(
            J.id == row.id,
            J.attempt == row.attempt,
            state_is(J.state, "running"),
            J.lease_expires_at < now,
        )
        .values(
            state="dead" if is_dead else "available",
            vtime=0,
            lease_owner=None,
            lease_expires_at=None,
            finished_at=now if is_dead else None,
            last_error=f"WorkerLost: {message}",
        )
    )
    if result.rowcount != 1:
        return False
    conn.execute(
        insert(job_errors_table),
        {
            "job_id": row.id,
            "tenant_id": row.tenant_id,
            "attempt": row.attempt,
            "error_type": "WorkerLost",
            "message": message,
            "traceback": "",
            "worker": row.lease_owner,
            "failed_at": now,
        },
    )
    return True
