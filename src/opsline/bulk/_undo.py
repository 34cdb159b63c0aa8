"""Undoing one chunk: decrypt its snapshot, skip records changed since, restore the rest.

Conflict check: the values of the snapshot's columns are captured now with the
same SQL that captured them right after the action; a record whose values
differ was changed since and is skipped with a reason (restored anyway when
the caller forces). A deleted record whose id exists again is always skipped.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from opsline.bulk import _crypto, _sql
from opsline.bulk._apply import ChunkRef, Outcome, chunk_ids
from opsline.bulk.models import failures_table, snapshots_table
from opsline.platform.resources import Resource

S = snapshots_table.c


def undo_chunk(
    session: Session,
    resource: Resource,
    original: ChunkRef,
    undo: ChunkRef,
    key: bytes,
    *,
    force: bool,
) -> Outcome:
    """Restore ``original``'s chunk; failures are recorded under ``undo``'s run."""
    row = session.execute(
        select(S.mode, S.data).where(S.run_id == original.run_id, S.chunk == original.chunk)
    ).first()
    if row is None:
        return Outcome(0, 0)
    plain = _crypto.unseal(key, original.tenant_id, original.run_id, original.chunk, row.data)
    snapshot = orjson.loads(plain)
    before: list[dict[str, Any]] = snapshot["b"]
    if not before:
        return Outcome(0, 0)
    columns = list(before[0])
    if row.mode == "delete":
        keep, conflicts = _deleted_to_restore(session, resource, before)
        done = _sql.restore_insert(session, resource.table, columns, orjson.dumps(keep))
    else:
        keep, conflicts = _updated_to_restore(session, resource, original, snapshot, force)
        data = orjson.dumps(keep)
        done = _sql.restore_update(session, resource.table, columns, data, original.tenant_id)
    if conflicts:
        session.execute(
            insert(failures_table),
            [
                {
                    "run_id": undo.run_id,
                    "tenant_id": undo.tenant_id,
                    "chunk": undo.chunk,
                    "record_id": rid,
                    "reason": reason,
                }
                for rid, reason in conflicts
            ],
        )
    return Outcome(done, len(conflicts))


Conflicts = list[tuple[uuid.UUID, str]]


def _updated_to_restore(
    session: Session,
    resource: Resource,
    original: ChunkRef,
    snapshot: dict[str, Any],
    force: bool,
) -> tuple[list[dict[str, Any]], Conflicts]:
    before: list[dict[str, Any]] = snapshot["b"]
    after = {str(r["id"]): r for r in snapshot["a"]}
    table = resource.table
    # The chunk's selected records (a superset of ``before``): no id list as parameters.
    where = _sql.tenant_is(session, table, original.tenant_id) & table.c.id.in_(chunk_ids(original))
    current = {
        str(r["id"]): r for r in orjson.loads(_sql.capture(session, table, list(before[0]), where))
    }
    keep, conflicts = [], []
    for record in before:
        rid = str(record["id"])
        now = current.get(rid)
        if now is None:
            conflicts.append((uuid.UUID(rid), "record no longer exists"))
        elif now != after.get(rid) and not force:
            conflicts.append(
                (uuid.UUID(rid), "changed since the action; undo with force to overwrite")
            )
        else:
            keep.append(record)
    return keep, conflicts


def _deleted_to_restore(
    session: Session, resource: Resource, before: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], Conflicts]:
    table = resource.table
    ids = [uuid.UUID(str(r["id"])) for r in before]
    existing = {str(i) for i in session.scalars(select(table.c.id).where(table.c.id.in_(ids)))}
    keep, conflicts = [], []
    for record, rid in zip(before, ids, strict=True):
        if str(rid) in existing:
            conflicts.append((rid, "a record with this id exists again"))
        else:
            keep.append(record)
    return keep, conflicts
