"""The audit log of bulk actions (``bulk_runs``: one row per run and per undo), exported.

Rows are read in keyset pages of ``_export.PAGE`` (newest first), always
within the caller's tenant, and streamed in the chosen format with the
same formula-injection guard as record exports.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import select

from opsline.bulk import _export
from opsline.bulk._runs import run_filters
from opsline.bulk.models import runs_table
from opsline.platform.context import Context

R = runs_table.c
HEADER = (
    "id",
    "kind",
    "status",
    "tenant_id",
    "actor",
    "actor_role",
    "resource",
    "action",
    "where",
    "ids",
    "params",
    "total",
    "processed",
    "failed",
    "undo_of",
    "ip",
    "user_agent",
    "error",
    "created_at",
    "started_at",
    "finished_at",
)
_JSON = frozenset({"where", "ids", "params"})
_SOURCE = {"where": "filters", "ids": "record_ids"}


def _row(row: Any) -> tuple[Any, ...]:
    out = []
    for name in HEADER:
        value = getattr(row, _SOURCE.get(name, name))
        if name in _JSON:
            value = None if value is None else orjson.dumps(value).decode()
        elif isinstance(value, uuid.UUID):
            value = str(value)
        out.append(value)
    return tuple(out)


def audit_rows(ctx: Context, filters: dict[str, str | None]) -> Iterator[tuple[Any, ...]]:
    """Every matching run of the tenant, newest first, one page per read transaction."""
    base = select(runs_table).where(*run_filters(ctx.tenant_id, **filters))
    after: tuple[datetime, uuid.UUID] | None = None
    while True:
        stmt = base
        if after is not None:
            at, last = after
            stmt = stmt.where((R.created_at < at) | ((R.created_at == at) & (R.id < last)))
        stmt = stmt.order_by(R.created_at.desc(), R.id.desc()).limit(_export.PAGE)
        with ctx.db.read() as session:
            page = session.execute(stmt).all()
        for row in page:
            yield _row(row)
        if len(page) < _export.PAGE:
            return
        after = (page[-1].created_at, page[-1].id)


def export_audit(
    ctx: Context, fmt: str, filters: dict[str, str | None]
) -> tuple[str, Iterator[bytes]]:
    rows = audit_rows(ctx, filters)
    name = f"bulk-audit-{ctx.tenant_id}.{fmt}"
    return name, _export.stream(fmt, "bulk actions audit log", HEADER, rows)
