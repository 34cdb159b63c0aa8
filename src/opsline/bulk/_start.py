"""Starting a run: resolve the selection once into numbered items, then one batch of chunk jobs.

The selection is copied with one ``INSERT ... SELECT`` numbering records in
storage order (neighbouring rows share a chunk, see :func:`_sql.storage_order`)
into chunks of ``batch_size`` (``row_number()``), in the transaction that
creates the batch, so records created later are never touched and every
chunk job knows exactly its records.
"""

from __future__ import annotations

import math
import uuid
from datetime import timedelta

from sqlalchemy import Integer, cast, func, insert, literal, select

from opsline.bulk import _sql, events
from opsline.bulk._runs import announce, event_fields
from opsline.bulk._selection import selection_clause
from opsline.bulk.errors import BulkLimitExceeded
from opsline.bulk.models import BulkRun, items_table
from opsline.db import UnitOfWork
from opsline.platform.engine.batches import create_batch
from opsline.platform.engine.enqueue import JobSpec
from opsline.platform.engine.events import publish
from opsline.platform.resources import Resource
from opsline.settings import Settings

APPLY_CHUNK = "bulk.apply_chunk"
UNDO_CHUNK = "bulk.undo_chunk"
FINISH_RUN = "bulk.finish_run"


def resolve_selection(uow: UnitOfWork, run: BulkRun, resource: Resource) -> int:
    """Copy the selected ids into ``bulk_run_items``; returns how many."""
    table = resource.table
    ids = [uuid.UUID(i) for i in run.record_ids] if run.record_ids is not None else None
    clause = selection_clause(resource, run.tenant_id, run.filters, ids)
    position = _sql.storage_order(uow.session, table)
    number = func.row_number().over(order_by=position) - 1
    chosen = select(
        literal(run.id, items_table.c.run_id.type).label("run_id"),
        cast(number // run.batch_size, Integer).label("chunk"),
        table.c.id.label("record_id"),
    ).where(clause)
    uow.session.execute(insert(items_table).from_select(["run_id", "chunk", "record_id"], chosen))
    # rowcount of INSERT ... SELECT is not reported by every driver: count instead.
    counted = select(func.count()).where(items_table.c.run_id == run.id)
    return int(uow.session.scalar(counted) or 0)


def start_run(uow: UnitOfWork, run: BulkRun, resource: Resource, settings: Settings) -> None:
    """Resolve, create the batch of chunk jobs, mark running; in the caller's transaction."""
    total = resolve_selection(uow, run, resource)
    if total > settings.bulk_max_records:
        raise BulkLimitExceeded(
            f"the selection has {total} records; at most {settings.bulk_max_records} "
            "per run: narrow it down or split it"
        )
    chunks = math.ceil(total / run.batch_size)
    jobs = [
        JobSpec(APPLY_CHUNK, {"run_id": run.id, "chunk": c}, tenant_id=run.tenant_id)
        for c in range(chunks)
    ]
    _launch(uow, run, jobs, total)
    if run.undo_days is not None:
        assert run.started_at is not None
        run.undo_expires_at = run.started_at + timedelta(days=run.undo_days)
    publish(uow, events.BulkActionStarted(**event_fields(run)))


def start_undo(uow: UnitOfWork, run: BulkRun, chunks: list[tuple[int, int]]) -> None:
    """``chunks``: (chunk, records) of the original run's snapshots."""
    jobs = [
        JobSpec(UNDO_CHUNK, {"run_id": run.id, "chunk": c}, tenant_id=run.tenant_id)
        for c, _ in chunks
    ]
    _launch(uow, run, jobs, sum(n for _, n in chunks))


def _launch(uow: UnitOfWork, run: BulkRun, jobs: list[JobSpec], total: int) -> None:
    run.total = total
    run.status = "running"
    uow.session.flush()
    run.batch_id = create_batch(
        uow,
        jobs,
        name=f"bulk:{run.kind}:{run.resource}:{run.action}",
        tenant_id=run.tenant_id,
        on_complete=FINISH_RUN,
        callback_args={"run_id": str(run.id)},
    )
    uow.session.flush()
    announce(uow, run)
