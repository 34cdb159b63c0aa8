"""Undoing one chunk: decrypt its snapshot, skip records changed since, restore the rest.

Conflict check: the values of the snapshot's columns are captured now with the
same SQL that captured them right after the action; a record whose values
differ was changed since and is skipped with a reason (restored anyway when
the caller forces). A deleted record whose id exists again is always skipped.

A resource's per-record policy holds for undo as for the action: restoring a
record is an update to its restored values (an insert, for a deleted one), asked
of the policy as the principal who undoes. Not "refuse when the run touched
protected records": what is allowed depends on who undoes and on the records as
they are now (an admin may not make someone owner again, nor demote an owner; an
owner may, but not past the last owner), which only a per-record check sees.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from opsline.bulk import _crypto, _sql
from opsline.bulk._apply import ChunkRef, Outcome, chunk_ids
from opsline.bulk.models import failures_table, runs_table, snapshots_table
from opsline.platform.auth.roles import Role
from opsline.platform.context import Principal
from opsline.platform.resources import PolicyCheck, Resource

S = snapshots_table.c
R = runs_table.c


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
    if row.mode == "delete":
        keep, conflicts = _deleted_to_restore(session, resource, before)
    else:
        keep, conflicts = _updated_to_restore(session, resource, original, snapshot, force)
    done, refused = _restore(session, resource, row.mode, keep, undo)
    conflicts += refused
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


def _write(
    session: Session,
    resource: Resource,
    mode: str,
    records: list[dict[str, Any]],
    tenant_id: uuid.UUID,
) -> int:
    if not records:
        return 0
    columns, data = list(records[0]), orjson.dumps(records)
    if mode == "delete":
        return _sql.restore_insert(session, resource.table, columns, data)
    return _sql.restore_update(session, resource.table, columns, data, tenant_id)


def _restore(
    session: Session, resource: Resource, mode: str, keep: list[dict[str, Any]], undo: ChunkRef
) -> tuple[int, Conflicts]:
    """Write ``keep`` back; with a policy (or a hook), group by group, each group
    asked first (and the resource's ``before_change`` told of it).

    Records are grouped by the restored values of the resource's settable and
    adjustable fields (what a policy judges an update by) and each group is
    written before the next is asked, so a policy that counts (the last owner)
    sees the groups before it applied: two groups cannot each count on the other.
    """
    policy, hook = resource.policy, resource.before_change
    if policy is None and hook is None:
        return _write(session, resource, mode, keep, undo.tenant_id), []
    principal = _undoer(session, undo)
    done, refused = 0, []
    for changes, records in _by_restored_values(resource, keep):
        ids = [uuid.UUID(str(r["id"])) for r in records]
        said = policy(PolicyCheck(session, principal, "update", ids, changes)) if policy else {}
        refused += [(rid, said[rid]) for rid in ids if rid in said]
        allowed = [r for r, rid in zip(records, ids, strict=True) if rid not in said]
        if hook is not None and mode != "delete" and allowed:
            going = [rid for rid in ids if rid not in said]
            hook(PolicyCheck(session, principal, "update", going, changes))
        done += _write(session, resource, mode, allowed, undo.tenant_id)
    return done, refused


def _undoer(session: Session, undo: ChunkRef) -> Principal:
    """Who asked for the undo, with the role they had when they asked (as for a run)."""
    row = session.execute(select(R.actor_role, R.user_id).where(R.id == undo.run_id)).one()
    return Principal(tenant_id=undo.tenant_id, role=Role(row.actor_role), user_id=row.user_id)


def _by_restored_values(
    resource: Resource, records: list[dict[str, Any]]
) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    judged = [f for f in resource.fields if f.settable or f.adjustable]
    groups: dict[bytes, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    for record in records:
        values = {f.name: record[f.column_name] for f in judged if f.column_name in record}
        key = orjson.dumps(values, option=orjson.OPT_SORT_KEYS)
        groups.setdefault(key, (values, []))[1].append(record)
    return [groups[key] for key in sorted(groups)]


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
    # Locked first, in id order as when applied: an edit committed between this
    # comparison and the restore would otherwise be overwritten unseen, and a
    # policy judges the records as they stay until commit. (SQLite: write lock.)
    session.execute(select(table.c.id).where(where).order_by(table.c.id).with_for_update())
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
