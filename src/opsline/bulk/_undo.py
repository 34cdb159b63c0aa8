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

Writing back is set-based, inside a savepoint. Should the database refuse it
(a record created since took a restored value that is unique: a product with
the same SKU), the savepoint is rolled back and the records are written one by
one, each in its own savepoint: the others are restored and each refused one
fails with the constraint and the value it clashes on.

A chunk whose snapshot is gone (purged) restores nothing: each record it
covered (the original chunk's records that did not fail) fails with the reason,
and the undo run's ``error`` names the chunk.

Undo is idempotent by record across undo runs. An undo that was cancelled,
failed or completed with errors may be followed by another undo of the same run;
that one goes over the run's applied chunks again but restores only the records
no earlier undo restored. Those an earlier undo refused or skipped (a unique
value taken meanwhile, changed since, a policy's refusal, a snapshot gone) are
tried again, with the new undo's ``force``; those it restored are left alone,
even with ``force`` (an edit made since is kept). Which ones were restored is
read from what the earlier undos stored, nothing else: an undo chunk commits its
chunk mark and its failures together, and each record of the snapshot it went
over ends restored, failed with a reason, or left alone as restored before. So a
record is still to restore when no earlier undo went over its chunk, or when
every earlier undo that did failed it (:mod:`opsline.bulk._restored`). A record
restored before counts nowhere in the new undo run: not in its ``total``, nor in
``processed`` or ``failed`` (the earlier undo run counted it), and a chunk with
nothing left is not queued.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from sqlalchemy import Index, Select, UniqueConstraint, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from opsline.bulk import _crypto, _sql
from opsline.bulk._apply import ChunkRef, Outcome, chunk_ids, failed_ids, record_failures
from opsline.bulk._restored import left_to_restore
from opsline.bulk.models import (
    failures_table,
    items_table,
    runs_table,
    snapshots_table,
)
from opsline.platform.auth.roles import Role
from opsline.platform.context import Principal
from opsline.platform.resources import PolicyCheck, Resource

S = snapshots_table.c
R = runs_table.c
I = items_table.c  # noqa: E741
SNAPSHOT_GONE = "not restored: the undo data of its chunk is gone (expired and purged)"


def undo_chunk(
    session: Session,
    resource: Resource,
    original: ChunkRef,
    undo: ChunkRef,
    key: bytes,
    *,
    force: bool,
) -> Outcome:
    """Restore ``original``'s chunk; failures are recorded under ``undo``'s run.

    The caller holds ``undo``'s chunk guard. Every record of the snapshot that
    no earlier undo restored (:func:`left_to_restore`) ends restored or failed
    with a reason; the others are left alone and counted nowhere. A missing
    snapshot fails the chunk (:func:`_snapshot_gone`) instead of raising.
    """
    left = left_to_restore(session, original)
    row = session.execute(
        select(S.mode, S.data).where(S.run_id == original.run_id, S.chunk == original.chunk)
    ).first()
    if row is None:
        return _snapshot_gone(session, original, undo, left)
    plain = _crypto.unseal(key, original.tenant_id, original.run_id, original.chunk, row.data)
    snapshot = orjson.loads(plain)
    before: list[dict[str, Any]] = snapshot["b"]
    if left is not None:
        ids = set(session.scalars(left))
        before = [r for r in before if uuid.UUID(str(r["id"])) in ids]
    if not before:
        return Outcome(0, 0)
    if row.mode == "delete":
        keep, conflicts = _deleted_to_restore(session, resource, before)
    else:
        keep, conflicts = _updated_to_restore(session, resource, original, snapshot, before, force)
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
                    "reason": reason[:300],
                }
                for rid, reason in conflicts
            ],
        )
    return Outcome(done, len(conflicts))


Conflicts = list[tuple[uuid.UUID, str]]


def _snapshot_gone(
    session: Session, original: ChunkRef, undo: ChunkRef, left: Select[Any] | None
) -> Outcome:
    """Fail a chunk whose snapshot is gone: its records are named when still known.

    The records it covered are the original chunk's selected records that did
    not fail (those are what the snapshot held), less those an earlier undo
    restored (``left``); the run's selection may be purged too, so the undo
    run's ``error`` names the chunk either way.
    """
    covered = chunk_ids(original).where(I.record_id.not_in(failed_ids(original)))
    if left is not None:
        if session.execute(left.limit(1)).first() is None:
            return Outcome(0, 0)  # earlier undos restored all of it: nothing is lost
        covered = covered.where(I.record_id.in_(left))
    failed = record_failures(session, undo, covered.subquery(), SNAPSHOT_GONE)
    error = (
        f"chunk {original.chunk}: the undo data is gone (expired and purged), "
        "its records were not restored"
    )
    return Outcome(0, failed, error=error)


def _write(
    session: Session,
    resource: Resource,
    mode: str,
    records: list[dict[str, Any]],
    tenant_id: uuid.UUID,
) -> tuple[int, Conflicts]:
    """Write ``records`` back in one statement inside a savepoint; should the database
    refuse it, each record in a savepoint of its own, so that a refused one fails with
    why and the rest go ahead. Returns (restored, refused)."""

    def write(batch: list[dict[str, Any]]) -> int:
        columns, data = list(batch[0]), orjson.dumps(batch)
        if mode == "delete":
            return _sql.restore_insert(session, resource.table, columns, data)
        return _sql.restore_update(session, resource.table, columns, data, tenant_id)

    if not records:
        return 0, []
    try:
        with session.begin_nested():
            return write(records), []
    except IntegrityError:
        pass
    done, refused = 0, []
    for record in records:
        try:
            with session.begin_nested():
                done += write([record])
        except IntegrityError as exc:
            rid = uuid.UUID(str(record["id"]))
            refused.append((rid, _refusal(session, resource, record, exc)))
    return done, refused


def _refusal(
    session: Session, resource: Resource, record: dict[str, Any], exc: IntegrityError
) -> str:
    """Why the database refused to restore ``record``: the unique constraint and the
    values a record created (or changed) since holds, else the database's own words."""
    data = orjson.dumps(record)
    for name, columns in _unique_column_sets(resource):
        restored = [c for c in columns if c in record and c != "tenant_id"]
        if restored and _sql.held_by_another(session, resource.table, columns, data):
            values = " and ".join(f"{c} {record[c]!r}" for c in restored)
            scope = "unique per tenant" if "tenant_id" in columns else "unique"
            named = f"{scope}: {name}" if name else scope
            clash = f"another {resource.name} record with {values} exists now"
            return f"not restored: {clash} ({named})"
    said = (str(exc.orig).strip().splitlines() or [""])[0]
    return f"not restored: refused by the database ({type(exc.orig).__name__}: {said})"


def _unique_column_sets(resource: Resource) -> list[tuple[str | None, list[str]]]:
    """(name, columns) of each unique constraint and plain unique index but the key.

    Partial and expression indexes are left out: comparing their columns alone
    would name a clash that is not one.
    """
    table = resource.table
    found: list[tuple[str | None, list[str]]] = []
    for constraint in table.constraints:
        if isinstance(constraint, UniqueConstraint):
            found.append((_name(constraint.name), [c.name for c in constraint.columns]))
    for index in table.indexes:
        if index.unique and _is_plain(index):
            found.append((_name(index.name), [c.name for c in index.columns]))
    return found


def _is_plain(index: Index) -> bool:
    options = index.dialect_kwargs.items()
    partial = any(key.endswith("_where") and value is not None for key, value in options)
    return not partial and len(index.expressions) == len(index.columns)


def _name(name: object) -> str | None:
    return str(name) if isinstance(name, str) else None


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
        return _write(session, resource, mode, keep, undo.tenant_id)
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
        written, clashed = _write(session, resource, mode, allowed, undo.tenant_id)
        done, refused = done + written, refused + clashed
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
    before: list[dict[str, Any]],
    force: bool,
) -> tuple[list[dict[str, Any]], Conflicts]:
    """``before``: the records of ``snapshot`` to restore (those no earlier undo did)."""
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
