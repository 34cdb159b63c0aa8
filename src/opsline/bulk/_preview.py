"""Dry run: count, a sample with before and after, warnings. Nothing changes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from opsline.bulk import _confirm
from opsline.bulk._selection import selection_clause
from opsline.bulk._spec import Spec, needs_confirmation
from opsline.bulk.schemas import PreviewOut, SampleRecord
from opsline.platform.context import Context
from opsline.platform.resources import PolicyCheck

POLICY_PREVIEW_LIMIT = 10_000


def plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _integral(value: Any) -> Any:
    return int(value) if isinstance(value, Decimal | float) else value


def _sample(session: Session, spec: Spec, clause: Any, limit: int) -> list[SampleRecord]:
    table, plan = spec.resource.table, spec.plan
    if plan.mode == "update":
        names = list(plan.changes)
        cols = [table.c[n] for n in names]
        after = [plan.shown.get(n, plan.changes[n]).label(f"after__{n}") for n in names]
    else:
        names = [f.column_name for f in spec.resource.fields]
        cols, after = [table.c[n] for n in names], []
    stmt = select(table.c.id, *cols, *after).where(clause).order_by(table.c.id).limit(limit)
    # Shown values are computed unbounded (see Plan.shown): integers may come back as numbers.
    ints = {f.column_name for f in spec.resource.fields if f.kind == "int"}
    out = []
    for row in session.execute(stmt):
        m = row._mapping
        before = {n: plain(m[table.c[n]]) for n in names}
        if plan.mode == "update":
            new: dict[str, Any] | None = {
                n: plain(_integral(m[f"after__{n}"]) if n in ints else m[f"after__{n}"])
                for n in names
            }
        else:
            new = None if plan.mode == "delete" else before
        out.append(SampleRecord(id=m[table.c.id], before=before, after=new))
    return out


def _warnings(ctx: Context, session: Session, spec: Spec, clause: Any, count: int) -> list[str]:
    table = spec.resource.table
    warnings = []
    for predicate, reason in spec.plan.checks:
        n = session.scalar(select(func.count()).select_from(table).where(clause, predicate))
        if n:
            warnings.append(f"{n} record(s) would fail: {reason}")
    policy = spec.resource.policy
    if policy is not None and spec.plan.mode != "none" and count <= POLICY_PREVIEW_LIMIT:
        ids = list(session.scalars(select(table.c.id).where(clause)))
        check = PolicyCheck(session, ctx.principal, spec.action, ids, spec.plan.values)
        reasons: dict[str, int] = {}
        for reason in policy(check).values():
            reasons[reason] = reasons.get(reason, 0) + 1
        warnings += [f"{n} record(s) would be refused: {r}" for r, n in reasons.items()]
    if count > ctx.settings.bulk_max_records:
        warnings.append(f"more than {ctx.settings.bulk_max_records} records: the run is refused")
    if count == 0:
        warnings.append("the selection is empty")
    return warnings


def preview(ctx: Context, spec: Spec, *, sample_size: int = 10) -> PreviewOut:
    with ctx.db.read() as session:
        clause = selection_clause(spec.resource, ctx.tenant_id, spec.where, spec.ids)
        table = spec.resource.table
        count = int(session.scalar(select(func.count()).select_from(table).where(clause)) or 0)
        sample = _sample(session, spec, clause, sample_size)
        warnings = _warnings(ctx, session, spec, clause, count)
    token, expires = _confirm.issue(ctx.settings, spec.fingerprint(ctx.principal))
    return PreviewOut(
        count=count,
        sample=sample,
        warnings=warnings,
        confirmation_token=token,
        confirmation_required=needs_confirmation(ctx, spec, count),
        confirmation_expires_at=datetime.fromtimestamp(expires, UTC),
        destructive=spec.resource.is_destructive(spec.action),
        undoable=spec.plan.undoable,
    )
