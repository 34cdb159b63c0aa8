"""Engine, sessions and the unit of work.

A use case runs in one :class:`UnitOfWork`: one transaction in which business
rows, published events and enqueued jobs are written together. Callbacks
registered with :meth:`UnitOfWork.after_commit` run only once the transaction
has committed (realtime pushes, worker wake-ups), never on rollback.

SQLite runs in WAL mode with a busy timeout. A unit of work on SQLite opens its
transaction with ``BEGIN IMMEDIATE`` so that it holds the write lock from the
first statement: two writers never deadlock on a read-to-write upgrade.
Writers of one process queue on a lock of the process (woken at once when it
is released); writers of other processes are waited for by retrying ``BEGIN
IMMEDIATE`` with sleeps of 50 µs growing to 2 ms, rather than SQLite's busy
handler, whose sleeps of 1, 2, 5, 10 ... ms cost throughput and tail latency.
Read-only sessions use a deferred ``BEGIN`` and never take the write lock.

``unit_of_work(wait=False)`` opens the transaction only if the write lock is
free at once, and raises :class:`WriteLockBusy` otherwise, before any work: it
lets a short write run on the event loop thread when nobody else is writing
(on SQLite the hop to a thread pool costs more than the write itself) and go
to the thread pool when it would have to wait.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any, cast

import structlog
from sqlalchemy import JSON, DateTime, MetaData, TypeDecorator, Uuid, create_engine, event
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from opsline.settings import Settings

log = structlog.get_logger(__name__)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> uuid.UUID:
    return uuid.uuid4()


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: UtcDateTime(),
        uuid.UUID: Uuid(),
        dict[str, Any]: JSON(),
    }


class WriteLockBusy(Exception):
    """``unit_of_work(wait=False)`` found the write lock taken; nothing was done."""


class Database:
    """One engine per process, shared by the API, the workers and the CLI."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = settings.sqlalchemy_url
        self.is_sqlite = self.url.startswith("sqlite")
        self.engine = _create_engine(settings, self.url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False, autoflush=True)
        self._read_engine = self.engine.execution_options(opsline_read_only=True)
        self._read_sessions = sessionmaker(self._read_engine, expire_on_commit=False)
        # SQLite: our begin hook skips BEGIN; PostgreSQL: psycopg's autocommit.
        self._lookup_engine = (
            self.engine.execution_options(opsline_no_transaction=True)
            if self.is_sqlite
            else self.engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        # SQLite has one writer at a time: queue this process's writers here.
        self._write_lock: threading.RLock | nullcontext[None] = (
            threading.RLock() if self.is_sqlite else nullcontext()
        )

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def unit_of_work(self, *, wait: bool = True) -> Iterator[UnitOfWork]:
        """Open one write transaction; commit on success, roll back on any error.

        With ``wait=False`` (SQLite only) raise :class:`WriteLockBusy` at once,
        having done nothing, if another thread or process holds the write lock.
        """
        with self._writer(wait):
            uow = UnitOfWork(self._sessions())
            try:
                if not wait:  # BEGIN IMMEDIATE now, once: WriteLockBusy if taken
                    uow.session.connection(execution_options={"opsline_no_wait": True})
                yield uow
                uow.commit()
            except BaseException:
                uow.rollback()
                raise
            finally:
                uow.session.close()
        uow.run_after_commit()

    @contextmanager
    def _writer(self, wait: bool) -> Iterator[None]:
        """This process's turn to write; with ``wait=False`` only if it is free now."""
        if wait:
            with self._write_lock:
                yield
            return
        if not self.is_sqlite:
            raise ValueError("unit_of_work(wait=False) is for SQLite's single writer")
        lock = cast(threading.RLock, self._write_lock)
        if not lock.acquire(blocking=False):
            raise WriteLockBusy
        try:
            yield
        finally:
            lock.release()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only session; never holds the SQLite write lock."""
        session = self._read_sessions()
        try:
            yield session
        finally:
            # close() ends the transaction but, unlike rollback(), keeps loaded
            # attributes readable on the now detached objects.
            session.close()

    @contextmanager
    def read_connection(self) -> Iterator[Connection]:
        """A Core connection (no ORM session) for one-statement lookups on hot paths.

        No transaction is opened: a single statement is consistent by itself,
        and this saves the BEGIN and ROLLBACK (two round trips on PostgreSQL).
        Use :meth:`read` when several statements must see one snapshot.
        """
        with self._lookup_engine.connect() as conn:
            yield conn

    def dispose(self) -> None:
        self.engine.dispose()


class UnitOfWork:
    """One transaction plus the callbacks to run after it commits."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._connection: Connection | None = None
        self._after_commit: list[Callable[[], None]] = []
        self._last: list[Callable[[], None]] = []
        self._committed = False
        self.info: dict[str, Any] = {}

    def after_commit(self, callback: Callable[[], None]) -> None:
        self._after_commit.append(callback)

    def last(self, step: Callable[[], None]) -> None:
        """Run ``step`` at the end of the transaction, just before commit.

        For statements on hot rows (a stock decrement): on PostgreSQL their row
        locks are then held only until the commit, not through the statements a
        caller still has to run. Errors raised by a step roll everything back.
        """
        self._last.append(step)

    def run_last(self) -> None:
        """Run the steps registered with :meth:`last` now (commit runs any left)."""
        steps, self._last = self._last, []
        for step in steps:
            step()

    @property
    def connection(self) -> Connection:
        """The transaction's connection, for Core statements on hot paths.

        Statements run here skip the ORM's execution layer. Pending ORM objects
        are flushed first, as the session's autoflush would.
        """
        self.session.flush()
        if self._connection is None:
            self._connection = self.session.connection()
        return self._connection

    def flush(self) -> None:
        self.session.flush()

    def commit(self) -> None:
        self.run_last()
        self.session.commit()
        self._committed = True

    def rollback(self) -> None:
        """Undo everything so far, side effects included; the unit stays usable."""
        self.session.rollback()
        self._connection = None
        self._last.clear()
        self._after_commit.clear()
        self.info.clear()

    def run_after_commit(self) -> None:
        if not self._committed:
            return
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                # The transaction is durable; a failed side effect must not turn
                # a committed use case into an error for its caller.
                log.exception("after_commit_failed", callback=getattr(callback, "__name__", ""))


def _create_engine(settings: Settings, url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_pool_size * 2,
        )
        _configure_sqlite(engine, settings.sqlite_synchronous, settings.sqlite_wal_autocheckpoint)
        return engine
    return create_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
    )


def _configure_sqlite(engine: Engine, synchronous: str, wal_autocheckpoint: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module: we emit BEGIN.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        # Checkpoint every N pages of WAL rather than SQLite's 1,000: a page
        # written by many commits is copied back to the database once.
        cursor.execute(f"PRAGMA wal_autocheckpoint={int(wal_autocheckpoint)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        options = connection.get_execution_options()
        if options.get("opsline_no_transaction", False):
            return  # one statement in autocommit: the sqlite3 module runs it alone
        if options.get("opsline_read_only", False):
            connection.exec_driver_sql("BEGIN")
        elif options.get("opsline_no_wait", False):
            begin_immediate(connection.connection.dbapi_connection, wait=False)
        else:
            begin_immediate(connection.connection.dbapi_connection)


WRITE_LOCK_WAIT_SECONDS = 30.0


def begin_immediate(dbapi_connection: Any, *, wait: bool = True) -> None:
    """Take SQLite's write lock, retrying with short sleeps while another process holds it.

    With ``wait=False`` one attempt: :class:`WriteLockBusy` if it is held.
    """
    dbapi_connection.execute("PRAGMA busy_timeout=0")
    try:
        delay = 0.00005
        deadline = time.monotonic() + WRITE_LOCK_WAIT_SECONDS
        while True:
            try:
                dbapi_connection.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if not wait:
                    raise WriteLockBusy from None
                if time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.002)
    finally:
        dbapi_connection.execute("PRAGMA busy_timeout=30000")


def as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
