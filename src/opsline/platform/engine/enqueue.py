"""Putting jobs on the queue, inside a unit of work or on their own.

Enqueue inside a :class:`UnitOfWork` writes the job row in the caller's
transaction: it commits or rolls back with the business rows, and idle workers
are woken only after commit. Enqueue on a :class:`Database` opens and commits
its own transaction. Arguments are validated before anything is written.

Unique jobs: while a job with the same unique key is pending (scheduled,
available, running or retryable), enqueueing returns the existing job's id.
The key is namespaced by job name and tenant; a partial unique index enforces
it, so concurrent enqueues of one key yield one job on both backends.
"""

from __future__ import annotations

import functools
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Uuid, bindparam, func, insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from opsline.db import Database, UnitOfWork, spin_begin_immediate, utcnow
from opsline.platform.engine import _sqlite_hot, _wake, metrics
from opsline.platform.engine._engines import hot_engine
from opsline.platform.engine.errors import InvalidJobArgs
from opsline.platform.engine.models import (
    PENDING_STATES,
    PRIORITY_RANGE,
    in_claim_order,
    jobs_table,
    state_is,
)
from opsline.platform.engine.registry import JobDef, get_job

Executor = Session | Connection
J = jobs_table.c
_UNIQUE_WHERE = text(
    "unique_key IS NOT NULL AND state IN ('scheduled', 'available', 'running', 'retryable')"
)


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job to enqueue with :func:`enqueue_many`."""

    job: str | JobDef
    args: Mapping[str, Any] = field(default_factory=dict)
    tenant_id: uuid.UUID | None = None
    delay: float | timedelta | None = None
    run_at: datetime | None = None
    priority: int | None = None


def enqueue(
    target: UnitOfWork | Database,
    job: str | JobDef,
    args: Mapping[str, Any] | None = None,
    *,
    tenant_id: uuid.UUID | None = None,
    delay: float | timedelta | None = None,
    run_at: datetime | None = None,
    priority: int | None = None,
) -> int:
    """Queue one job and return its id (the existing job's id for a duplicate unique key).

    Raises :class:`InvalidJobArgs` or :class:`UnknownJob` before writing anything.
    """
    spec = JobSpec(job, args or {}, tenant_id, delay, run_at, priority)
    return enqueue_many(target, [spec])[0]


def enqueue_many(
    target: UnitOfWork | Database, specs: Iterable[JobSpec], *, batch_id: uuid.UUID | None = None
) -> list[int]:
    """Queue many jobs in one transaction; ids are returned in the order given."""
    rows = build_rows(specs, batch_id=batch_id)
    if isinstance(target, Database):
        return _enqueue_direct(target, rows)
    ids = insert_rows(target.connection, rows)
    _after_enqueue(target, rows)
    return ids


def enqueue_later(uow: UnitOfWork, specs: Iterable[JobSpec]) -> None:
    """Queue jobs in ``uow``'s transaction without waiting for their ids.

    A job due now is written with :meth:`UnitOfWork.execute_later`: on
    PostgreSQL it travels with the transaction's next statement instead of
    taking a round trip of its own; a unique job whose key is pending is
    skipped, as :func:`enqueue` would skip it. Jobs queued together this way
    may share a fair vtime (ties go by id).
    """
    rows = build_rows(specs)
    dialect = uow.bind.dialect.name
    due = [row for row in rows if row["state"] == "available"]
    for row in due:
        uow.execute_later(*_fair(dialect, row, returning=False))
    if len(due) < len(rows):
        insert_rows(uow.connection, [row for row in rows if row["state"] != "available"])
    _after_enqueue(uow, rows)


def _enqueue_direct(db: Database, rows: list[dict[str, Any]]) -> list[int]:
    """Own short transaction on the engine's hot connections (no ORM session)."""
    engine = hot_engine(db)
    if db.is_sqlite:
        proxy = engine.raw_connection()
        raw: Any = proxy.dbapi_connection
        try:
            spin_begin_immediate(raw)
            try:
                ids = _sqlite_hot.insert_rows(raw, rows)
                raw.execute("COMMIT")
            except BaseException:
                raw.execute("ROLLBACK")
                raise
        finally:
            proxy.close()
    elif len(rows) == 1:
        # One job is one statement, its fair vtime computed inside it (a unique
        # job's look-up of the pending one is a statement of its own either
        # way): atomic alone, so it commits alone, without a round trip for
        # BEGIN and one for COMMIT. The jobs_notify trigger notifies workers.
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            ids = insert_rows(conn, rows)
    else:
        with engine.begin() as conn:
            ids = insert_rows(conn, rows)
    _count_enqueued(Counter(row["queue"] for row in rows))
    _wake.notify(_wake.url_key(db.engine))
    return ids


def build_rows(
    specs: Iterable[JobSpec], *, batch_id: uuid.UUID | None = None
) -> list[dict[str, Any]]:
    now = utcnow()
    return [_row(spec, now, batch_id) for spec in specs]


def _row(spec: JobSpec, now: datetime, batch_id: uuid.UUID | None) -> dict[str, Any]:
    definition = spec.job if isinstance(spec.job, JobDef) else get_job(spec.job)
    args = definition.validate(spec.args)
    run_at = spec.run_at or now
    if spec.delay is not None:
        seconds = spec.delay.total_seconds() if isinstance(spec.delay, timedelta) else spec.delay
        run_at = now + timedelta(seconds=seconds)
    priority = definition.priority if spec.priority is None else spec.priority
    if priority not in PRIORITY_RANGE:
        raise InvalidJobArgs(
            f"priority {priority} of {definition.name} is out of range: give a 32-bit integer "
            f"({PRIORITY_RANGE.start} to {PRIORITY_RANGE.stop - 1}); lower runs first"
        )
    scope = f"{definition.name}|{spec.tenant_id or '-'}|"
    unique = definition.unique(args) if definition.unique else None
    concurrency = definition.concurrency_key(args) if definition.concurrency_key else None
    return {
        "tenant_id": spec.tenant_id,
        "name": definition.name,
        "queue": definition.queue,
        "priority": priority,
        "vtime": 0,
        "state": "available" if run_at <= now else "scheduled",
        "args": args,
        "attempt": 0,
        "max_attempts": definition.max_attempts,
        "run_at": run_at,
        "created_at": now,
        "unique_key": None if unique is None else scope + unique,
        "concurrency_key": None if concurrency is None else scope + concurrency,
        "concurrency_limit": definition.concurrency_limit if concurrency is not None else None,
        "batch_id": batch_id,
        "cancel_requested": False,
    }


def insert_rows(executor: Executor, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Insert prepared rows in the executor's transaction; returns ids in order.

    Fair virtual time: a tenant's new job goes after that tenant's pending jobs
    in its queue but no later than the head of the queue, so tenants alternate.
    """
    if len(rows) == 1 and rows[0]["state"] == "available":
        return [_insert_fair(executor, rows[0])]
    _assign_vtimes(executor, rows)
    ids: list[int] = []
    for row in rows:
        if row["unique_key"] is None:
            ids.append(executor.execute(_INSERT, row).scalar_one())
        else:
            ids.append(_insert_unique(executor, row))
    return ids


_INSERT = insert(jobs_table).returning(J.id)
_NOTIFY = text(f"SELECT pg_notify('{_wake.CHANNEL}', '')")


def _assign_vtimes(executor: Executor, rows: Sequence[dict[str, Any]]) -> None:
    tails: dict[tuple[str, uuid.UUID | None], int] = {}
    for row in rows:
        if row["state"] != "available":
            continue
        scope = (row["queue"], row["tenant_id"])
        if scope not in tails:
            tails[scope] = _start_vtime(executor, *scope)
        row["vtime"] = tails[scope]
        tails[scope] += 1


# Ordered by every column of ix_jobs_fair so that the planner walks that index
# backwards even before statistics exist (a fresh table), instead of scanning.
_TAIL_ORDER = (J.queue.desc(), J.tenant_id.desc(), J.vtime.desc())
_TAIL = (
    select(J.vtime + 1)
    .where(
        state_is(J.state, "available"),
        J.queue == bindparam("q"),
        J.tenant_id == bindparam("t", type_=Uuid()),
    )
    .order_by(*_TAIL_ORDER)
    .limit(1)
    .scalar_subquery()
)
_TAIL_SYSTEM = (
    select(J.vtime + 1)
    .where(state_is(J.state, "available"), J.queue == bindparam("q"), J.tenant_id.is_(None))
    .order_by(*_TAIL_ORDER)
    .limit(1)
    .scalar_subquery()
)
# The head of the queue: the next job in claim order (an index seek, not a scan).
_HEAD = (
    select(J.vtime)
    .where(state_is(J.state, "available"), J.queue == bindparam("q"), in_claim_order(J.priority))
    .order_by(J.queue, J.priority, J.vtime, J.id)
    .limit(1)
)
_START = select(func.coalesce(_TAIL, _HEAD.scalar_subquery(), 0))
_START_SYSTEM = select(func.coalesce(_TAIL_SYSTEM, _HEAD.scalar_subquery(), 0))


@functools.cache
def _fair_insert(
    dialect: str, columns: tuple[str, ...], *, system: bool, unique: bool, returning: bool
) -> Any:
    """One statement (one round trip on PostgreSQL): the row with its fair vtime,
    and for a unique job nothing while one with its key is pending. Every value
    is a named parameter; without ``returning`` it can be held back
    (``UnitOfWork.execute_later``) and travel in another statement."""
    tail = _TAIL_SYSTEM if system else _TAIL
    values: dict[str, Any] = {c: bindparam(c, type_=J[c].type) for c in columns}
    values["vtime"] = func.coalesce(tail, _HEAD.scalar_subquery(), 0)
    factory = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = factory(jobs_table).values(values)
    if unique:
        stmt = stmt.on_conflict_do_nothing(index_elements=["unique_key"], index_where=_UNIQUE_WHERE)
    # inline: the id is left to its sequence, nothing fetched (fits in a CTE).
    return stmt.returning(J.id) if returning else stmt.inline()


def _fair(dialect: str, row: dict[str, Any], *, returning: bool) -> tuple[Any, dict[str, Any]]:
    """The fair insert of ``row`` and its parameters (the vtime is computed)."""
    params = {k: v for k, v in row.items() if k != "vtime"}
    params["q"] = row["queue"]
    system = row["tenant_id"] is None
    if not system:
        params["t"] = row["tenant_id"]
    columns = tuple(k for k in row if k != "vtime")
    unique = row["unique_key"] is not None
    stmt = _fair_insert(dialect, columns, system=system, unique=unique, returning=returning)
    return stmt, params


def _insert_fair(executor: Executor, row: dict[str, Any]) -> int:
    statement = _fair(_dialect(executor), row, returning=True)
    return _inserted_or_pending(executor, row, lambda: executor.execute(*statement))


def _dialect(executor: Executor) -> str:
    if isinstance(executor, Session):
        return executor.get_bind().dialect.name
    return executor.dialect.name


def _start_vtime(executor: Executor, queue: str, tenant_id: uuid.UUID | None) -> int:
    if tenant_id is None:
        return int(executor.execute(_START_SYSTEM, {"q": queue}).scalar_one())
    return int(executor.execute(_START, {"q": queue, "t": tenant_id}).scalar_one())


_INSERT_UNIQUE = {
    name: factory(jobs_table)
    .on_conflict_do_nothing(index_elements=["unique_key"], index_where=_UNIQUE_WHERE)
    .returning(J.id)
    for name, factory in (("postgresql", pg_insert), ("sqlite", sqlite_insert))
}
_PENDING_BY_KEY = select(J.id).where(
    J.unique_key == bindparam("unique_key"), J.state.in_(PENDING_STATES)
)


def _insert_unique(executor: Executor, row: dict[str, Any]) -> int:
    statement = _INSERT_UNIQUE[_dialect(executor)]
    return _inserted_or_pending(executor, row, lambda: executor.execute(statement, row))


_UNIQUE_TRIES = 5


def _inserted_or_pending(executor: Executor, row: dict[str, Any], insert: Callable[[], Any]) -> int:
    """The new job's id, or for a unique key already pending that job's id.

    On PostgreSQL the pending job can finish between the insert that met its key
    and the look-up (each statement sees what was committed when it began): the
    key is then free, and the insert is tried again.
    """
    for _ in range(_UNIQUE_TRIES):
        inserted = insert().scalar_one_or_none()
        if inserted is not None:
            return int(inserted)
        pending = executor.execute(
            _PENDING_BY_KEY, {"unique_key": row["unique_key"]}
        ).scalar_one_or_none()
        if pending is not None:
            return int(pending)
    raise RuntimeError(
        f"unique job key {row['unique_key']!r} was taken and freed {_UNIQUE_TRIES} times over"
    )


def _after_enqueue(uow: UnitOfWork, rows: Sequence[dict[str, Any]]) -> None:
    """Count per queue and arrange one wake-up per unit of work, after commit."""
    counts: Counter[str] = uow.info.setdefault("engine_enqueued", Counter())
    first = not counts
    counts.update(row["queue"] for row in rows)
    if first:
        uow.after_commit(lambda: _count_enqueued(counts))
        # On PostgreSQL the jobs_notify trigger already notifies on INSERT.
        wake_workers(uow, notify_postgres=False)


def _count_enqueued(counts: Counter[str]) -> None:
    for queue, count in counts.items():
        metrics.JOBS_ENQUEUED.labels(queue).inc(count)


def wake_workers(uow: UnitOfWork, *, notify_postgres: bool = True) -> None:
    """Wake idle workers once ``uow`` commits (idempotent within one unit of work).

    In-process workers get a signal after commit; on PostgreSQL a ``NOTIFY``
    is issued in the transaction (delivered on commit) unless the caller only
    inserted jobs, which the ``jobs_notify`` trigger announces by itself.
    """
    if uow.info.get("engine_wake"):
        return
    uow.info["engine_wake"] = True
    bind = uow.bind
    if notify_postgres and bind.dialect.name == "postgresql":
        # Delivered by PostgreSQL only if and when this transaction commits.
        uow.session.execute(_NOTIFY)
    key = _wake.url_key(bind.engine)
    uow.after_commit(lambda: _wake.notify(key))
