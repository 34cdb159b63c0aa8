"""The two hottest statements on SQLite, executed on the raw sqlite3 connection.

Claiming and acking run thousands of times a second; going through
SQLAlchemy's statement execution costs several times the SQL itself. These
functions run inside the cycle's SQLAlchemy transaction (same connection,
after ``BEGIN IMMEDIATE``) and produce exactly what the Core statements in
``_store`` produce on PostgreSQL. Values use SQLAlchemy's SQLite storage
formats: timestamps as naive UTC text, UUIDs as 32 hex digits, JSON as text.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from opsline.platform.engine.models import CLAIM_ORDER

if TYPE_CHECKING:
    from opsline.platform.engine._store import ClaimedJob

CLAIM = (
    "UPDATE jobs SET state = 'running', attempt = attempt + 1, attempted_at = ?,"
    " lease_owner = ?, lease_expires_at = ?"
    " WHERE id IN (SELECT id FROM jobs WHERE state = 'available' AND queue = ?"
    f" AND {CLAIM_ORDER}"
    " AND (concurrency_key IS NULL OR (SELECT count(*) FROM jobs AS r"
    " WHERE r.state = 'running' AND r.concurrency_key IS NOT NULL"
    " AND r.concurrency_key = jobs.concurrency_key) < concurrency_limit)"
    " ORDER BY priority, vtime, id LIMIT ?)"
    " RETURNING id, name, queue, tenant_id, args, attempt, max_attempts, batch_id,"
    " concurrency_key, priority, vtime"
)


def timestamp(value: datetime) -> str:
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def _uuid(value: str | None) -> uuid.UUID | None:
    return uuid.UUID(hex=value) if value else None


def claim(
    raw: Any, queue: str, n: int, now: datetime, worker: str, expires: datetime
) -> list[ClaimedJob]:
    from opsline.platform.engine._store import ClaimedJob

    rows = raw.execute(CLAIM, (timestamp(now), worker, timestamp(expires), queue, n)).fetchall()
    return [
        ClaimedJob(
            row[0],
            row[1],
            row[2],
            _uuid(row[3]),
            orjson.loads(row[4]),
            row[5],
            row[6],
            _uuid(row[7]),
            row[8],
            row[9],
            row[10],
        )
        for row in rows
    ]


def finish(
    raw: Any, state: str, jobs: Sequence[ClaimedJob], now: datetime, worker: str
) -> set[int]:
    """Fenced final state for ``jobs``; returns the ids it applied to."""
    assert state in ("succeeded", "cancelled")
    marks = ",".join("?" * len(jobs))
    pairs = ",".join(["(?,?)"] * len(jobs))
    sql = (
        f"UPDATE jobs SET state = '{state}', finished_at = ?, lease_owner = NULL,"
        " lease_expires_at = NULL WHERE lease_owner = ? AND state = 'running'"
        f" AND id IN ({marks}) AND (id, attempt) IN (VALUES {pairs}) RETURNING id"
    )
    params: list[Any] = [timestamp(now), worker]
    params += [job.id for job in jobs]
    for job in jobs:
        params += (job.id, job.attempt)
    return {row[0] for row in raw.execute(sql, params).fetchall()}


_COLUMNS = (
    "tenant_id",
    "name",
    "queue",
    "priority",
    "vtime",
    "state",
    "args",
    "attempt",
    "max_attempts",
    "run_at",
    "created_at",
    "unique_key",
    "concurrency_key",
    "concurrency_limit",
    "batch_id",
    "cancel_requested",
)
_INSERT = f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
_UNIQUE = (
    " ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN"
    " ('scheduled', 'available', 'running', 'retryable') DO NOTHING"
)
_START_VTIME = (
    "SELECT coalesce((SELECT vtime + 1 FROM jobs WHERE state = 'available'"
    " AND queue = ? AND tenant_id IS ? ORDER BY queue DESC, tenant_id DESC, vtime DESC"
    " LIMIT 1), (SELECT vtime FROM jobs WHERE state = 'available' AND queue = ?"
    f" AND {CLAIM_ORDER}"
    " ORDER BY queue, priority, vtime, id LIMIT 1), 0)"
)
_EXISTING = (
    "SELECT id FROM jobs WHERE unique_key = ?"
    " AND state IN ('scheduled', 'available', 'running', 'retryable')"
)


def insert_rows(raw: Any, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Insert prepared job rows (see ``enqueue.build_rows``) in the open transaction."""
    tails: dict[tuple[str, str | None], int] = {}
    ids: list[int] = []
    for row in rows:
        tenant = row["tenant_id"].hex if row["tenant_id"] else None
        if row["state"] == "available":
            scope = (row["queue"], tenant)
            if scope not in tails:
                tails[scope] = raw.execute(_START_VTIME, (scope[0], tenant, scope[0])).fetchone()[0]
            row["vtime"] = tails[scope]
            tails[scope] += 1
        values = [row[c] for c in _COLUMNS]
        values[0] = tenant
        values[6] = orjson.dumps(row["args"]).decode()
        values[9], values[10] = timestamp(row["run_at"]), timestamp(row["created_at"])
        values[14] = row["batch_id"].hex if row["batch_id"] else None
        values[15] = int(row["cancel_requested"])
        if row["unique_key"] is None:
            ids.append(raw.execute(_INSERT + " RETURNING id", values).fetchone()[0])
            continue
        inserted = raw.execute(_INSERT + _UNIQUE + " RETURNING id", values).fetchone()
        if inserted is None:
            inserted = raw.execute(_EXISTING, (row["unique_key"],)).fetchone()
        ids.append(inserted[0])
    return ids
