"""Which records of a run earlier undos restored: what a new undo leaves alone.

An undo that did not restore everything (cancelled, failed, completed with
errors) may be followed by a new undo of the same run, which restores only the
records no earlier undo restored (undo is idempotent by record, see
:mod:`opsline.bulk._undo`). Nothing is stored for this: it follows from what
each undo chunk commits in one transaction, its chunk mark (``bulk_chunks``
under the undo run's id) and its failures (``bulk_failures``). An undo that went
over a chunk ended each record of the chunk's snapshot restored, failed with a
reason, or left alone because an earlier undo restored it. So a record is still
to restore when no earlier undo went over its chunk, or when every one that did
failed it; a chunk mark alone (no failure of that record) means it was restored,
by that undo or before it. A chunk rolled back (its undo cancelled meanwhile) or
dead after its retries left neither mark nor failures: as if never gone over.

Every query is within the tenant: the undo runs are the tenant's runs with
``undo_of`` the run (the ``(tenant_id, undo_of)`` index); chunk marks are
reached only through those runs, failures carry the tenant too.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from opsline.bulk._apply import ChunkRef
from opsline.bulk.models import chunks_table, failures_table, runs_table

R = runs_table.c
C = chunks_table.c
F = failures_table.c
ENDED_UNDO = ("cancelled", "failed", "completed_with_errors")
"""Final states of an undo after which its run may be undone again: it left records
unrestored (refused, skipped as changed since, never reached)."""


def _earlier_undos(tenant_id: uuid.UUID, run_id: uuid.UUID) -> Select[Any]:
    """Undos of run ``run_id`` that ended with records left (through ``(tenant_id, undo_of)``).

    Only such an undo (:data:`ENDED_UNDO`) lets its run be undone again, so only
    those are looked at; the running undo is not among them.
    """
    return select(R.id).where(
        R.tenant_id == tenant_id, R.undo_of == run_id, R.status.in_(ENDED_UNDO)
    )


def left_to_restore(session: Session, original: ChunkRef) -> Select[Any] | None:
    """The ids of ``original``'s records that earlier undos went over and none restored.

    A query for the chunk's records that every earlier undo which went over the
    chunk (its chunk mark) failed; None when no earlier undo went over the
    chunk: then all its records are left to restore. Only the failures count,
    not their reasons: an undo fails each record of the chunk it does not
    restore (nor leave alone as restored before), in the transaction of its mark.
    """
    earlier = _earlier_undos(original.tenant_id, original.run_id)
    went_over = session.scalar(
        select(func.count())
        .select_from(chunks_table)
        .where(C.run_id.in_(earlier), C.chunk == original.chunk)
    )
    if not went_over:
        return None
    return (
        select(F.record_id)
        .where(F.tenant_id == original.tenant_id, F.run_id.in_(earlier), F.chunk == original.chunk)
        .group_by(F.record_id)
        .having(func.count(F.run_id.distinct()) == went_over)
    )


def chunks_to_undo(
    session: Session, tenant_id: uuid.UUID, run_id: uuid.UUID
) -> list[tuple[int, int]]:
    """(chunk, records left to restore) of the run's applied chunks with any left.

    Read from the chunk marks, not from the snapshots: a chunk whose snapshot
    is gone is still undone, and fails with the reason, rather than skipped
    unseen. A chunk no earlier undo went over has all its changed records left
    (its mark's ``processed``: what its snapshot holds); one that earlier undos
    went over, those every one of them failed (as :func:`left_to_restore`).
    """
    earlier = _earlier_undos(tenant_id, run_id)
    visits = (
        select(C.chunk, func.count().label("undos"))
        .where(C.run_id.in_(earlier))
        .group_by(C.chunk)
        .subquery("went_over")
    )
    refusals = (
        select(F.chunk, F.record_id, func.count(F.run_id.distinct()).label("undos"))
        .where(F.tenant_id == tenant_id, F.run_id.in_(earlier))
        .group_by(F.chunk, F.record_id)
        .subquery("refusals")
    )
    failed_by_all = (visits.c.chunk == refusals.c.chunk) & (visits.c.undos == refusals.c.undos)
    went_over = set(session.scalars(select(visits.c.chunk)))
    left_stmt = (
        select(refusals.c.chunk, func.count())
        .select_from(refusals.join(visits, failed_by_all))
        .group_by(refusals.c.chunk)
    )
    left: dict[int, int] = dict(session.execute(left_stmt).all())
    rows = session.execute(
        select(C.chunk, C.processed).where(C.run_id == run_id, C.processed > 0).order_by(C.chunk)
    )
    counts = [(c, left.get(c, 0) if c in went_over else n) for c, n in rows]
    return [(c, n) for c, n in counts if n > 0]
