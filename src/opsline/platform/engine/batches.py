"""Batches: a group of jobs with counts, progress, cancellation and callbacks.

A batch is created with all its jobs in one transaction, so its ``total`` is
known up front. Each job that reaches a final state (succeeded, dead,
cancelled) bumps the batch counters in the same transaction as its ack.

Exactly-once callbacks: the transaction that completes the batch sets
``finished_at`` with a conditional ``UPDATE ... WHERE finished_at IS NULL``
after updating the counters. The counter update holds the batch row's write
lock (PostgreSQL row lock; SQLite's single writer) until commit, so of two acks
finishing the last two jobs together exactly one sees the batch complete and
enqueues ``on_success`` (no failure, nothing cancelled), ``on_failure`` (some
job dead) and ``on_complete`` (always), each with ``batch_id`` as argument.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update
from sqlalchemy.orm import Session

from opsline.db import UnitOfWork, new_id, utcnow
from opsline.platform.engine.enqueue import JobSpec, build_rows, enqueue_many, insert_rows
from opsline.platform.engine.errors import BatchNotFound
from opsline.platform.engine.models import Batch, batches_table, jobs_table
from opsline.platform.engine.registry import JobDef, get_job

B = batches_table.c
J = jobs_table.c
Executor = Session | Connection


@dataclass(frozen=True, slots=True)
class BatchCounts:
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0


def create_batch(
    uow: UnitOfWork,
    jobs: Sequence[JobSpec],
    *,
    name: str,
    tenant_id: uuid.UUID | None = None,
    on_success: str | JobDef | None = None,
    on_failure: str | JobDef | None = None,
    on_complete: str | JobDef | None = None,
    callback_args: Mapping[str, Any] | None = None,
) -> uuid.UUID:
    """Create a batch and enqueue its jobs in ``uow``; callbacks are job names."""
    batch_id = new_id()
    extra = dict(callback_args or {})
    names = {}
    for key, callback in (
        ("on_success", on_success),
        ("on_failure", on_failure),
        ("on_complete", on_complete),
    ):
        if callback is not None:
            definition = callback if isinstance(callback, JobDef) else get_job(callback)
            definition.validate({"batch_id": batch_id, **extra})
            names[key] = definition.name
    now = utcnow()
    uow.session.execute(
        batches_table.insert().values(
            id=batch_id,
            tenant_id=tenant_id,
            name=name,
            total=len(jobs),
            succeeded=0,
            failed=0,
            cancelled=0,
            cancel_requested=False,
            callback_args=extra,
            created_at=now,
            **names,
        )
    )
    enqueue_many(uow, jobs, batch_id=batch_id)
    if not jobs:
        record_finished(uow.session, {}, now, force=[batch_id])
    return batch_id


def record_finished(
    executor: Executor,
    counts: Mapping[uuid.UUID, BatchCounts],
    now: datetime,
    *,
    force: Sequence[uuid.UUID] = (),
) -> list[uuid.UUID]:
    """Add final-state counts to batches; enqueue callbacks of batches this completes.

    Must run in the transaction that moved the jobs to their final state.
    Returns the ids of batches completed by this call. Batch rows are updated in
    id order, so that transactions finishing jobs of the same batches (two
    workers' acks, a rescue, a cancel) wait for each other instead of deadlocking.
    """
    for batch_id, c in sorted(counts.items()):
        executor.execute(
            update(batches_table)
            .where(B.id == batch_id)
            .values(
                succeeded=B.succeeded + c.succeeded,
                failed=B.failed + c.failed,
                cancelled=B.cancelled + c.cancelled,
            )
        )
    finished = []
    for batch_id in sorted({*counts, *force}):
        row = executor.execute(
            update(batches_table)
            .where(
                B.id == batch_id,
                B.finished_at.is_(None),
                B.succeeded + B.failed + B.cancelled >= B.total,
            )
            .values(finished_at=now)
            .returning(
                B.tenant_id,
                B.failed,
                B.cancelled,
                B.on_success,
                B.on_failure,
                B.on_complete,
                B.callback_args,
            )
        ).first()
        if row is not None:
            _enqueue_callbacks(executor, batch_id, row)
            finished.append(batch_id)
    return finished


def _enqueue_callbacks(executor: Executor, batch_id: uuid.UUID, row: Any) -> None:
    names = []
    if row.on_success and row.failed == 0 and row.cancelled == 0:
        names.append(row.on_success)
    if row.on_failure and row.failed > 0:
        names.append(row.on_failure)
    if row.on_complete:
        names.append(row.on_complete)
    args = {"batch_id": batch_id, **(row.callback_args or {})}
    specs = [JobSpec(name, args, tenant_id=row.tenant_id) for name in names]
    if specs:
        insert_rows(executor, build_rows(specs))


def get_batch(uow_or_session: Session, batch_id: uuid.UUID, tenant_id: uuid.UUID | None) -> Batch:
    """The batch of this tenant (``None``: system batches); another tenant's is not found."""
    batch = uow_or_session.get(Batch, batch_id)
    if batch is None or batch.tenant_id != tenant_id:
        raise BatchNotFound(f"no batch {batch_id}")
    return batch


def cancel_batch(uow: UnitOfWork, batch_id: uuid.UUID, tenant_id: uuid.UUID | None) -> int:
    """Cancel pending jobs now; running ones get the cancellation flag (cooperative).

    Idempotent: cancelling a finished or cancelled batch changes nothing.
    Returns how many pending jobs were cancelled.
    """
    get_batch(uow.session, batch_id, tenant_id)
    now = utcnow()
    uow.session.execute(update(batches_table).where(B.id == batch_id).values(cancel_requested=True))
    cancelled = uow.session.execute(
        update(jobs_table)
        .where(J.batch_id == batch_id, J.state.in_(("scheduled", "available", "retryable")))
        .values(state="cancelled", finished_at=now, cancel_requested=True)
        .returning(J.id)
    ).all()
    uow.session.execute(
        update(jobs_table)
        .where(J.batch_id == batch_id, J.state == "running")
        .values(cancel_requested=True)
    )
    record_finished(uow.session, {batch_id: BatchCounts(cancelled=len(cancelled))}, now)
    return len(cancelled)


def progress(batch: Batch) -> float:
    done = batch.succeeded + batch.failed + batch.cancelled
    return 1.0 if batch.total == 0 else min(1.0, done / batch.total)


def batch_jobs_query(batch_id: uuid.UUID) -> Any:
    return select(J.id, J.state).where(J.batch_id == batch_id)
