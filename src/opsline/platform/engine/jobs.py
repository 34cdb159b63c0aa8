"""The engine's own periodic job: pruning finished jobs and batches.

Succeeded and cancelled jobs, and batches finished as long ago, are kept
``job_retention_days`` for inspection, then deleted in chunks (dead jobs stay
until flushed by an operator). Idempotent: a re-run deletes what is still old
enough.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select

from opsline.db import utcnow
from opsline.platform.engine.context import JobContext
from opsline.platform.engine.models import batches_table, job_errors_table, jobs_table
from opsline.platform.engine.registry import job
from opsline.platform.engine.scheduler import periodic

J = jobs_table.c
B = batches_table.c
CHUNK = 2000


@periodic("23 3 * * *")
@job("engine.prune_finished_jobs", queue="low", max_attempts=3)
def prune_finished_jobs(ctx: JobContext) -> None:
    cutoff = utcnow() - timedelta(days=ctx.settings.job_retention_days)
    while not ctx.is_cancelled():
        with ctx.unit_of_work() as uow:
            ids = (
                uow.session.execute(
                    select(J.id)
                    .where(J.state.in_(("succeeded", "cancelled")), J.finished_at < cutoff)
                    .limit(CHUNK)
                )
                .scalars()
                .all()
            )
            if not ids:
                break
            uow.session.execute(delete(job_errors_table).where(job_errors_table.c.job_id.in_(ids)))
            uow.session.execute(delete(jobs_table).where(J.id.in_(ids)))
    finished = select(B.id).where(B.finished_at < cutoff).limit(CHUNK).scalar_subquery()
    while not ctx.is_cancelled():
        with ctx.unit_of_work() as uow:
            result = uow.session.execute(delete(batches_table).where(B.id.in_(finished)))
            if (result.rowcount or 0) < CHUNK:  # type: ignore[attr-defined]
                return
