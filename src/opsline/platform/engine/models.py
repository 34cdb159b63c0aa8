"""Tables of the engine: jobs, their failed attempts, the event log, batches,
leases and periodic-job state.

The hot path (enqueue, claim, ack) uses Core statements on ``Job.__table__``;
these ORM classes exist for the admin use cases and for Alembic.

Job states: ``scheduled`` (waits for ``run_at``), ``available`` (claimable),
``running`` (leased by a worker), ``retryable`` (failed, waits for its backoff),
``succeeded``, ``dead`` (attempts exhausted) and ``cancelled``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, cast

from sqlalchemy import BigInteger, Index, Integer, String, Table, Text, literal_column, text
from sqlalchemy.orm import Mapped, mapped_column

from opsline.db import Base, new_id, utcnow

# SQLite only aliases the rowid (cheap autoincrement) for exactly "INTEGER".
BigId = BigInteger().with_variant(Integer(), "sqlite")

PENDING_STATES = ("scheduled", "available", "running", "retryable")
FINAL_STATES = ("succeeded", "dead", "cancelled")
ALL_STATES = PENDING_STATES + FINAL_STATES

# PostgreSQL re-analyses a table once 10% of its rows changed since the last
# ANALYZE. On a jobs table grown large with finished rows, a backlog of waiting
# jobs can pass that unseen: the statistics still say no job waits, and the
# enqueue's tail look-up (ix_jobs_fair, backwards) is planned as a scan of
# ix_jobs_claim and a sort of every waiting job (11 ms an enqueue at
# 35,000 waiting). Re-analysed after every 1,000 changed rows instead, within
# autovacuum's naptime (a minute by default). Migration 0011 sets the same.
JOBS_STORAGE = {"autovacuum_analyze_scale_factor": 0, "autovacuum_analyze_threshold": 1000}


# ix_jobs_claim's second condition holds for every row (priority is a 32-bit
# integer) and is stated only by the statements that want claim order: the
# claim and a queue's head (``in_claim_order``). Any other look-up of waiting
# jobs cannot use that index, so a stale estimate cannot plan the enqueue's
# tail look-up as a walk of the whole queue in claim order and a sort of its
# waiting jobs (see JOBS_STORAGE); only ix_jobs_fair serves it. Not
# "priority IS NOT NULL": PostgreSQL 17 drops that qual on a NOT NULL column.
PRIORITY_RANGE = range(-(2**31), 2**31)
CLAIM_ORDER = f"priority >= {PRIORITY_RANGE.start}"


def in_claim_order(priority: Any) -> Any:
    """The condition of ix_jobs_claim besides the state, on ``priority`` (the
    column of ``jobs`` or of an alias): a statement in claim order states it."""
    return priority >= literal_column(str(PRIORITY_RANGE.start))


def state_is(column: Any, state: str) -> Any:
    """``column = '<state>'`` as a SQL literal, so the planner can use the partial
    indexes declared ``WHERE state = '...'`` (a bound parameter cannot match them)."""
    assert state in ALL_STATES
    return column == literal_column(f"'{state}'")


def _where(condition: str) -> dict[str, Any]:
    clause = text(condition)
    return {"sqlite_where": clause, "postgresql_where": clause}


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # Claim order inside a queue: priority, then fair virtual time, then FIFO.
        Index(
            "ix_jobs_claim",
            "queue",
            "priority",
            "vtime",
            "id",
            **_where(f"state = 'available' AND {CLAIM_ORDER}"),
        ),
        # Fairness clock (head of a queue) and a tenant's tail in that queue.
        Index("ix_jobs_fair", "queue", "tenant_id", "vtime", **_where("state = 'available'")),
        Index("ix_jobs_due", "run_at", **_where("state IN ('scheduled', 'retryable')")),
        Index("ix_jobs_lease", "lease_expires_at", **_where("state = 'running'")),
        Index(
            "uq_jobs_unique_key",
            "unique_key",
            unique=True,
            **_where(
                "unique_key IS NOT NULL AND state IN "
                "('scheduled', 'available', 'running', 'retryable')"
            ),
        ),
        Index(
            "ix_jobs_concurrency",
            "concurrency_key",
            **_where("state = 'running' AND concurrency_key IS NOT NULL"),
        ),
        Index("ix_jobs_tenant_id_id", "tenant_id", "id"),
        Index("ix_jobs_finished", "state", "finished_at", **_where("finished_at IS NOT NULL")),
        Index("ix_jobs_batch_id", "batch_id", **_where("batch_id IS NOT NULL")),
        {"postgresql_with": JOBS_STORAGE},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID | None]
    name: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(50))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    vtime: Mapped[int] = mapped_column(BigInteger, default=0)
    state: Mapped[str] = mapped_column(String(16))
    args: Mapped[dict[str, Any]]
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    run_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    attempted_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    unique_key: Mapped[str | None] = mapped_column(String(400))
    concurrency_key: Mapped[str | None] = mapped_column(String(200))
    concurrency_limit: Mapped[int | None] = mapped_column(Integer)
    batch_id: Mapped[uuid.UUID | None]
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    last_error: Mapped[str | None] = mapped_column(Text)


class JobError(Base):
    """One failed attempt: what was raised, where, and by which worker."""

    __tablename__ = "job_errors"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(BigInteger, index=True)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    error_type: Mapped[str] = mapped_column(String(200))
    message: Mapped[str] = mapped_column(Text)
    traceback: Mapped[str] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(64))
    failed_at: Mapped[datetime] = mapped_column(default=utcnow)


class EventRecord(Base):
    """The event log: every published domain event, immutable."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_tenant_id_occurred_at", "tenant_id", "occurred_at"),
        Index("ix_events_type_occurred_at", "type", "occurred_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID | None]
    type: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    occurred_at: Mapped[datetime]
    payload: Mapped[dict[str, Any]]


class Batch(Base):
    """A group of jobs with counts and then/catch/finally callbacks (job names)."""

    __tablename__ = "job_batches"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    name: Mapped[str] = mapped_column(String(200))
    total: Mapped[int] = mapped_column(Integer, default=0)
    succeeded: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    cancelled: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    on_success: Mapped[str | None] = mapped_column(String(200))
    on_failure: Mapped[str | None] = mapped_column(String(200))
    on_complete: Mapped[str | None] = mapped_column(String(200))
    callback_args: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class Lease(Base):
    """A named lease (e.g. the scheduler leader) held by one owner until it expires."""

    __tablename__ = "engine_leases"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime]


class PeriodicState(Base):
    """The last cron slot a periodic job was enqueued for (compare-and-set guard)."""

    __tablename__ = "periodic_jobs"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    last_slot_at: Mapped[datetime]


jobs_table = cast(Table, Job.__table__)
job_errors_table = cast(Table, JobError.__table__)
events_table = cast(Table, EventRecord.__table__)
batches_table = cast(Table, Batch.__table__)
leases_table = cast(Table, Lease.__table__)
periodic_table = cast(Table, PeriodicState.__table__)
