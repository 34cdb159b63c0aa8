"""Applying one chunk of a run, set-based, inside the chunk job's transaction.

Order inside the transaction: lock the chunk's rows; record failures (missing
records, failed checks, policy refusals) with ``INSERT ... SELECT``; capture the original
values of the rest in SQL; one ``UPDATE`` (or ``DELETE``) of the rest, whose
``RETURNING`` captures the new values (for undo's conflict check); store the
encrypted snapshot.
Should the set-based statement hit a constraint (a row still referenced), the
chunk falls back to one savepoint per record so only the offending records fail.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import ColumnElement, and_, delete, func, insert, literal, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from opsline.bulk import _crypto, _sql
from opsline.bulk._plan import Plan
from opsline.bulk.models import failures_table, items_table, snapshots_table
from opsline.platform.context import Principal
from opsline.platform.resources import PolicyCheck

I = items_table.c  # noqa: E741
F = failures_table.c


@dataclass(frozen=True, slots=True)
class ChunkRef:
    run_id: uuid.UUID
    tenant_id: uuid.UUID
    chunk: int


@dataclass(frozen=True, slots=True)
class Outcome:
    processed: int
    failed: int
    error: str | None = None
    """Why the chunk as a whole failed, added to its run's ``error``."""


def chunk_ids(ref: ChunkRef) -> Any:
    return select(I.record_id).where(I.run_id == ref.run_id, I.chunk == ref.chunk)


def failed_ids(ref: ChunkRef) -> Any:
    return select(F.record_id).where(F.run_id == ref.run_id, F.chunk == ref.chunk)


def record_failures(session: Session, ref: ChunkRef, source: Any, reason: str) -> int:
    """``source`` selects record ids; each becomes a failure with ``reason``. Returns
    how many."""
    cols = [
        literal(ref.run_id).label("run_id"),
        literal(ref.tenant_id).label("tenant_id"),
        literal(ref.chunk).label("chunk"),
        source.c.record_id,
        literal(reason[:300]).label("reason"),
    ]
    return _sql.rowcount(
        session.execute(
            insert(failures_table).from_select(
                ["run_id", "tenant_id", "chunk", "record_id", "reason"], select(*cols)
            )
        )
    )


def _mark_missing(session: Session, plan: Plan, ref: ChunkRef) -> None:
    """Record the chunk's records that are not (or no longer) stored as failures."""
    table = plan.resource.table
    tenant = _sql.tenant_is(session, table, ref.tenant_id)
    present = select(table.c.id).where(table.c.id == I.record_id, tenant)
    missing = chunk_ids(ref).where(~present.exists(), I.record_id.not_in(failed_ids(ref)))
    record_failures(session, ref, missing.subquery(), "record no longer exists")


def _mark_failures(
    session: Session, plan: Plan, ref: ChunkRef, principal: Principal, *, missing: bool
) -> None:
    """Record the records that must not change; ``missing``: look for vanished records too."""
    if missing:
        _mark_missing(session, plan, ref)
    table = plan.resource.table
    tenant = _sql.tenant_is(session, table, ref.tenant_id)
    base = and_(tenant, table.c.id.in_(chunk_ids(ref)))
    for predicate, reason in plan.checks:
        source = (
            select(table.c.id.label("record_id"))
            .where(base, predicate, table.c.id.not_in(failed_ids(ref)))
            .subquery()
        )
        record_failures(session, ref, source, reason)
    if plan.resource.policy is not None:
        _apply_policy(session, plan, ref, principal, base)


def _apply_policy(
    session: Session, plan: Plan, ref: ChunkRef, principal: Principal, base: Any
) -> None:
    table = plan.resource.table
    ids = list(session.scalars(select(table.c.id).where(base, table.c.id.not_in(failed_ids(ref)))))
    assert plan.resource.policy is not None
    refused = plan.resource.policy(PolicyCheck(session, principal, plan.action, ids, plan.values))
    if refused:
        session.execute(
            insert(failures_table),
            [
                {
                    "run_id": ref.run_id,
                    "tenant_id": ref.tenant_id,
                    "chunk": ref.chunk,
                    "record_id": rid,
                    "reason": reason[:300],
                }
                for rid, reason in refused.items()
            ],
        )


def apply_chunk(
    session: Session,
    plan: Plan,
    ref: ChunkRef,
    principal: Principal,
    key: bytes,
    expires_at: datetime | None,
) -> Outcome:
    """Apply ``plan`` to the chunk's records (caller holds the chunk guard).

    Every record of the chunk ends either processed or failed with a reason.
    An ``UPDATE`` removes no record, so for updates vanished records are looked
    for only when the counts show some are unaccounted for (rarely), after it.
    """
    table = plan.resource.table
    if plan.mode != "none":
        # The chunk's rows locked first, in id order: on PostgreSQL an edit
        # committed between the capture of the old values and the UPDATE would
        # otherwise be built upon and then lost to an undo, with no conflict seen.
        # (On SQLite the chunk's transaction holds the write lock already.)
        session.execute(
            select(table.c.id)
            .where(_sql.tenant_is(session, table, ref.tenant_id), table.c.id.in_(chunk_ids(ref)))
            .order_by(table.c.id)
            .with_for_update()
        )
    late = plan.mode == "update"
    _mark_failures(session, plan, ref, principal, missing=not late)
    target = and_(
        _sql.tenant_is(session, table, ref.tenant_id),
        table.c.id.in_(chunk_ids(ref)),
        table.c.id.not_in(failed_ids(ref)),
    )
    hook = plan.resource.before_change
    if hook is not None and plan.mode != "none":
        ids = list(session.scalars(select(table.c.id).where(target)))
        hook(PolicyCheck(session, principal, plan.action, ids, plan.values))
    if plan.mode == "none":
        done = _count(session, select(table.c.id).where(target))
    else:
        done = _change(session, plan, ref, target, key, expires_at)
    failed = _count(session, failed_ids(ref))
    if late and done + failed < _count(session, chunk_ids(ref)):
        _mark_missing(session, plan, ref)
        failed = _count(session, failed_ids(ref))
    return Outcome(processed=done, failed=failed)


def _count(session: Session, ids: Any) -> int:
    """How many rows the one-column ``ids`` query selects."""
    return int(session.scalar(select(func.count()).select_from(ids.subquery())) or 0)


def _change(
    session: Session,
    plan: Plan,
    ref: ChunkRef,
    target: ColumnElement[bool],
    key: bytes,
    expires_at: datetime | None,
) -> int:
    try:
        with session.begin_nested():
            before, after, done = _statement(session, plan, target)
    except IntegrityError:
        before, after, done = _one_by_one(session, plan, ref, target)
    if expires_at is not None and plan.undoable and done:
        blob = b'{"b":' + before + b',"a":' + after + b"}"
        session.execute(
            insert(snapshots_table).values(
                run_id=ref.run_id,
                chunk=ref.chunk,
                tenant_id=ref.tenant_id,
                mode=plan.mode,
                records=done,
                data=_crypto.seal(key, ref.tenant_id, ref.run_id, ref.chunk, blob),
                expires_at=expires_at,
            )
        )
    return done


def _statement(
    session: Session, plan: Plan, target: ColumnElement[bool]
) -> tuple[bytes, bytes, int]:
    table = plan.resource.table
    columns = plan.snapshot_columns()
    before = _sql.capture(session, table, columns, target)
    if plan.mode == "delete":
        done = _sql.rowcount(session.execute(delete(table).where(target)))
        return before, b"[]", done
    after, done = _sql.update_capturing(session, table, columns, target, plan.changes)
    return before, after, done


def _one_by_one(
    session: Session, plan: Plan, ref: ChunkRef, target: ColumnElement[bool]
) -> tuple[bytes, bytes, int]:
    table = plan.resource.table
    befores: list[Any] = []
    afters: list[Any] = []
    for record_id in list(session.scalars(select(table.c.id).where(target))):
        try:
            with session.begin_nested():
                b, a, n = _statement(session, plan, and_(target, table.c.id == record_id))
        except IntegrityError as exc:
            reason = f"refused by the database: {type(exc.orig).__name__}"
            session.execute(
                insert(failures_table).values(
                    run_id=ref.run_id,
                    tenant_id=ref.tenant_id,
                    chunk=ref.chunk,
                    record_id=record_id,
                    reason=reason,
                )
            )
            continue
        if n:
            befores += orjson.loads(b)
            afters += orjson.loads(a)
    return orjson.dumps(befores), orjson.dumps(afters), len(befores)
