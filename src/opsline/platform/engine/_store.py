"""The worker's statements: claim, ack, fail, heartbeat, rescue, promote, release.

Every statement that changes a running job is **fenced**: it applies only
``WHERE lease_owner = <this worker> AND state = 'running' AND (id, attempt) =
<the attempt it claimed>``. A worker that lost its lease (its job was rescued
and maybe re-run elsewhere) therefore can never overwrite the newer attempt;
its late ack is a no-op.

No transaction is ever held while a handler runs: a cycle is one short write
transaction (``BEGIN IMMEDIATE`` on SQLite) that applies the grouped outcomes
of finished jobs, promotes due jobs, and claims as many jobs as there are
free slots.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import (
    Connection,
    func,
    insert,
    select,
    text,
)

from opsline.db import Database, utcnow
from opsline.platform.engine import _sql as sql
from opsline.platform.engine import _sqlite_hot
from opsline.platform.engine._engines import hot_engine
from opsline.platform.engine.batches import BatchCounts, record_finished
from opsline.platform.engine.models import job_errors_table, jobs_table, state_is

J = jobs_table.c
TS = J.run_at.type
Status = Literal["succeeded", "failed", "cancelled", "deferred"]


@dataclass(slots=True)
class ClaimedJob:
    id: int
    name: str
    queue: str
    tenant_id: uuid.UUID | None
    args: dict[str, Any]
    attempt: int
    max_attempts: int
    batch_id: uuid.UUID | None
    concurrency_key: str | None
    priority: int = 0
    vtime: int = 0


@dataclass(slots=True)
class Failure:
    error_type: str
    message: str
    traceback: str
    retry_at: datetime | None  # None: dead (no attempts left)


@dataclass(slots=True)
class Outcome:
    job: ClaimedJob
    status: Status
    failure: Failure | None = None
    seconds: float = 0.0
    defer_until: datetime | None = None  # "deferred": rate-limited, not an attempt


@dataclass(slots=True)
class Applied:
    """What a cycle actually changed (fenced-out outcomes are absent)."""

    outcomes: list[Outcome] = field(default_factory=list)
    finished_batches: list[uuid.UUID] = field(default_factory=list)


class Store:
    """Statements of one worker process (``worker_id`` is its lease owner name)."""

    def __init__(self, db: Database, worker_id: str, lease_seconds: float) -> None:
        self.db = db
        self.engine = hot_engine(db)
        self.is_postgres = db.engine.dialect.name == "postgresql"
        self.is_sqlite = not self.is_postgres
        self.worker_id = worker_id
        self.lease = timedelta(seconds=lease_seconds)

    def cycle(
        self, outcomes: Sequence[Outcome], plan: Sequence[tuple[str, int]], *, promote: bool
    ) -> tuple[list[ClaimedJob], Applied]:
        """One transaction: apply outcomes, promote due jobs, claim per ``plan``.

        ``plan`` lists (queue, slots) in preference order; slots a queue cannot
        fill go to the next queues of the plan.
        """
        now = utcnow()
        with self.engine.begin() as conn:
            applied = self._apply(conn, outcomes, now) if outcomes else Applied()
            if promote:
                conn.execute(sql.PROMOTE, {"now": now})
            claimed = self._claim_plan(conn, plan, now) if plan else []
        return claimed, applied

    def _claim_plan(
        self, conn: Connection, plan: Sequence[tuple[str, int]], now: datetime
    ) -> list[ClaimedJob]:
        claimed = self._claim_each(conn, plan, now)
        got: dict[str, int] = defaultdict(int)
        for job in claimed:
            got[job.queue] += 1
        spare = 0
        drained: set[str] = set()
        for queue, slots in plan:
            if got[queue] < slots:
                spare += slots - got[queue]
                drained.add(queue)
        for queue, _ in plan:
            if spare <= 0:
                break
            if queue not in drained:
                more = self._claim(conn, queue, spare, now)
                claimed += more
                spare -= len(more)
        return claimed

    def _claim_each(
        self, conn: Connection, plan: Sequence[tuple[str, int]], now: datetime
    ) -> list[ClaimedJob]:
        """Each queue's share of the plan; on PostgreSQL in one statement."""
        wanted = [(queue, n) for queue, n in plan if n > 0]
        if self.is_sqlite:
            return [job for queue, n in wanted for job in self._claim(conn, queue, n, now)]
        return self._claim_postgres(conn, wanted, now) if wanted else []

    def _claim(self, conn: Connection, queue: str, n: int, now: datetime) -> list[ClaimedJob]:
        if n <= 0:
            return []
        if not self.is_sqlite:
            return self._claim_postgres(conn, [(queue, n)], now)
        raw = _raw(conn)
        jobs = _sqlite_hot.claim(raw, queue, n, now, self.worker_id, now + self.lease)
        jobs = self._enforce_limits(conn, jobs)
        jobs.sort(key=lambda job: (job.priority, job.vtime, job.id))
        return jobs

    def _claim_postgres(
        self, conn: Connection, wanted: Sequence[tuple[str, int]], now: datetime
    ) -> list[ClaimedJob]:
        """Up to ``n`` jobs of each (queue, n), in the order of ``wanted``, then of claim."""
        params: dict[str, Any] = {"now": now, "worker": self.worker_id, "expires": now + self.lease}
        for i, (queue, n) in enumerate(wanted):
            params[f"b_queue_{i}"], params[f"n_{i}"] = queue, n
        rows = conn.execute(sql.claim_statement(len(wanted)), params)
        jobs = self._enforce_limits(conn, [ClaimedJob(*row) for row in rows])
        rank = {queue: i for i, (queue, _) in enumerate(wanted)}
        jobs.sort(key=lambda job: (rank[job.queue], job.priority, job.vtime, job.id))
        return jobs

    def _enforce_limits(self, conn: Connection, jobs: list[ClaimedJob]) -> list[ClaimedJob]:
        """Give back jobs claimed beyond their key's concurrency limit.

        On PostgreSQL a transaction-scoped advisory lock per key (taken in key
        order, so no deadlock) serialises claimers of one key, and the count
        below then sees every committed claim; SQLite has one writer anyway.
        """
        keys = sorted({job.concurrency_key for job in jobs if job.concurrency_key})
        if not keys:
            return jobs
        if self.is_postgres:
            for key in keys:
                conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": key})
        rows = conn.execute(
            select(J.concurrency_key, func.count(), func.min(J.concurrency_limit))
            .where(state_is(J.state, "running"), J.concurrency_key.in_(keys))
            .group_by(J.concurrency_key)
        ).all()
        excess = {key: count - limit for key, count, limit in rows if count > limit}
        give_back: list[ClaimedJob] = []
        for job in sorted(jobs, key=lambda j: -j.id):
            if job.concurrency_key and excess.get(job.concurrency_key, 0) > 0:
                excess[job.concurrency_key] -= 1
                give_back.append(job)
        if give_back:
            self._release(conn, give_back)
        kept = {job.id for job in give_back}
        return [job for job in jobs if job.id not in kept]

    def _apply(self, conn: Connection, outcomes: Sequence[Outcome], now: datetime) -> Applied:
        applied = Applied()
        by_status: dict[str, list[Outcome]] = defaultdict(list)
        for outcome in outcomes:
            by_status[outcome.status].append(outcome)
        for status, stmt in (("succeeded", sql.SUCCEED), ("cancelled", sql.CANCEL)):
            group = by_status.get(status)
            if group:
                done = self._finish(conn, stmt, status, group, now)
                applied.outcomes += [o for o in group if o.job.id in done]
        for outcome in by_status.get("failed", ()):
            if self._fail(conn, outcome, now):
                applied.outcomes.append(outcome)
        for outcome in by_status.get("deferred", ()):
            params = {
                "worker": self.worker_id,
                "job_id": outcome.job.id,
                "job_attempt": outcome.job.attempt,
                "run_at": outcome.defer_until,
            }
            if conn.execute(sql.DEFER, params).rowcount == 1:
                applied.outcomes.append(outcome)
        applied.finished_batches = record_finished(conn, _batch_counts(applied.outcomes), now)
        return applied

    def _finish(
        self, conn: Connection, stmt: Any, status: str, group: list[Outcome], now: datetime
    ) -> set[int]:
        jobs = [o.job for o in group]
        if self.is_sqlite:
            return _sqlite_hot.finish(_raw(conn), status, jobs, now, self.worker_id)
        params = {"now": now, "worker": self.worker_id, **_pairs(jobs)}
        return {row[0] for row in conn.execute(stmt, params)}

    def _fail(self, conn: Connection, outcome: Outcome, now: datetime) -> bool:
        failure = outcome.failure
        assert failure is not None
        job = outcome.job
        dead = failure.retry_at is None
        result = conn.execute(
            sql.FAIL,
            {
                "worker": self.worker_id,
                "job_id": job.id,
                "job_attempt": job.attempt,
                "new_state": "dead" if dead else "retryable",
                "retry_at": failure.retry_at or now,
                "finished": now if dead else None,
                "message": f"{failure.error_type}: {failure.message}"[:2000],
            },
        )
        if result.rowcount != 1:
            return False
        conn.execute(
            insert(job_errors_table),
            {
                "job_id": job.id,
                "tenant_id": job.tenant_id,
                "attempt": job.attempt,
                "error_type": failure.error_type,
                "message": failure.message,
                "traceback": failure.traceback,
                "worker": self.worker_id,
                "failed_at": now,
            },
        )
        return True

    def heartbeat(self, jobs: Sequence[ClaimedJob]) -> tuple[set[int], set[int]]:
        """Renew leases; returns (ids still owned, ids whose cancellation was requested)."""
        if not jobs:
            return set(), set()
        now = utcnow()
        params = {
            **_pairs(jobs),
            "worker": self.worker_id,
            "expires": now + self.lease,
        }
        with self.engine.begin() as conn:
            rows = conn.execute(sql.HEARTBEAT, params).all()
        return {row[0] for row in rows}, {row[0] for row in rows if row[1]}

    def release(self, jobs: Sequence[ClaimedJob]) -> None:
        """Give claimed jobs back (shutdown); the attempt is not counted."""
        if jobs:
            with self.engine.begin() as conn:
                self._release(conn, jobs)

    def _release(self, conn: Connection, jobs: Sequence[ClaimedJob]) -> None:
        conn.execute(sql.RELEASE, {**_pairs(jobs), "worker": self.worker_id})


def _raw(conn: Connection) -> Any:
    return conn.connection.dbapi_connection


def _pairs(jobs: Sequence[ClaimedJob]) -> dict[str, Any]:
    return {"ids": [j.id for j in jobs], "pairs": [(j.id, j.attempt) for j in jobs]}


def _batch_counts(outcomes: Sequence[Outcome]) -> dict[uuid.UUID, BatchCounts]:
    counts: dict[uuid.UUID, list[int]] = defaultdict(lambda: [0, 0, 0])
    for outcome in outcomes:
        job = outcome.job
        if job.batch_id is None:
            continue
        if outcome.status == "succeeded":
            counts[job.batch_id][0] += 1
        elif outcome.status == "cancelled":
            counts[job.batch_id][2] += 1
        elif outcome.failure is not None and outcome.failure.retry_at is None:
            counts[job.batch_id][1] += 1
    return {key: BatchCounts(*value) for key, value in counts.items()}
