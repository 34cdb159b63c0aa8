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

Round trips are what a PostgreSQL transaction costs most, so a write whose
outcome nothing waits for (an event's row, a job, an order's lines) can be held
back with :meth:`UnitOfWork.execute_later`: it travels with the next statement
run through :meth:`UnitOfWork.execute`, as a data-modifying CTE of that
statement, or goes on its own before anything reads (the session, the
connection) and at commit. SQLite, in-process, runs it at once. A held-back
write may carry a guard (``expect=`` rows, else ``otherwise``'s error), checked
inside the statement that sends it. A unit that only looked things up
(:meth:`UnitOfWork.lookup`) and held its writes back never opens a transaction:
at commit its writes go as one statement, atomic by itself, with no ``BEGIN``
or ``COMMIT`` round trip.

On PostgreSQL, :meth:`Database.on_loop` runs the same blocking use-case code on
the event loop: inside it, sessions and connections come from an asyncio engine
of that loop and each statement awaits its round trip (SQLAlchemy's greenlet
bridge), so a request's work needs no thread and never hands the GIL over
while it waits on the database.
"""

from __future__ import annotations

import asyncio
import functools
import keyword
import os
import sqlite3
import threading
import time
import uuid
import weakref
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

import structlog
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Insert,
    Integer,
    MetaData,
    Table,
    TypeDecorator,
    Uuid,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    select,
    union_all,
)
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter, ClauseElement
from sqlalchemy.sql.selectable import HasCTE, Select
from sqlalchemy.sql.visitors import ExternallyTraversible, replacement_traverse
from sqlalchemy.types import TypeEngine
from sqlalchemy.util import greenlet_spawn

from opsline.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

log = structlog.get_logger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
# The largest integer a BIGINT (SQLite's INTEGER) holds: more does not even bind.
BIGINT_MAX = 2**63 - 1


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> uuid.UUID:
    """A row id: a UUID version 7 (RFC 9562), the Unix time in ms, then 74 random bits.

    Ids made one after another sort near each other, so a primary key's inserts
    land on the index's last pages rather than on a random page each (which on
    SQLite is read into its small page cache and written to the WAL, and on
    PostgreSQL dirties a page of its own and its full-page image). The random
    bits come from the OS's CSPRNG, as uuid4's: ids are no easier to guess.
    Ids made in the same millisecond are in no particular order among themselves.
    """
    rand = int.from_bytes(os.urandom(10)) >> 6  # 74 bits
    return uuid.UUID(
        int=(time.time_ns() // 1_000_000) << 80
        | _UUID7_VERSION
        | (rand >> 62) << 64
        | _UUID_VARIANT
        | rand & _LOW_62
    )


_UUID7_VERSION = 7 << 76
_UUID_VARIANT = 0b10 << 62
_LOW_62 = (1 << 62) - 1


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


@dataclass(frozen=True, slots=True)
class _Binds:
    """The sessions and the autocommit lookups of one engine."""

    sessions: sessionmaker[Session]
    # Every transaction of theirs begins only if SQLite's write lock is free at
    # once (WriteLockBusy if not): after a rollback too, not just the first.
    no_wait_sessions: sessionmaker[Session]
    read_sessions: sessionmaker[Session]
    lookups: Engine

    @classmethod
    def of(cls, engine: Engine, *, sqlite: bool, lookups: Engine | None = None) -> _Binds:
        """``lookups``: an engine whose connections are in autocommit for good;
        without it, ``engine``'s connections are switched to it for each lookup."""
        if lookups is None:
            # SQLite: our begin hook skips BEGIN; PostgreSQL: psycopg's autocommit.
            lookups = (
                engine.execution_options(opsline_no_transaction=True)
                if sqlite
                else engine.execution_options(isolation_level="AUTOCOMMIT")
            )
        return cls(
            sessions=sessionmaker(engine, expire_on_commit=False, autoflush=True),
            no_wait_sessions=sessionmaker(
                engine.execution_options(opsline_no_wait=True),
                expire_on_commit=False,
                autoflush=True,
            ),
            read_sessions=sessionmaker(
                engine.execution_options(opsline_read_only=True), expire_on_commit=False
            ),
            lookups=lookups,
        )


@dataclass(frozen=True, slots=True)
class _LoopEngine:
    """An asyncio engine of one event loop, and the turns of work it runs at once."""

    engine: AsyncEngine
    lookups: AsyncEngine  # its connections stay in autocommit
    binds: _Binds
    turns: asyncio.Semaphore


# Set while Database.on_loop runs a function: that database's binds on the loop.
_on_loop: ContextVar[tuple[Database, _Binds] | None] = ContextVar("opsline_on_loop", default=None)


class Database:
    """One engine per process, shared by the API, the workers and the CLI."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = settings.sqlalchemy_url
        self.is_sqlite = self.url.startswith("sqlite")
        self.engine = _create_engine(settings, self.url)
        self._binds = _Binds.of(self.engine, sqlite=self.is_sqlite)
        # SQLite has one writer at a time: queue this process's writers here.
        self._write_lock: threading.RLock | nullcontext[None] = (
            threading.RLock() if self.is_sqlite else nullcontext()
        )
        # PostgreSQL: an asyncio engine per event loop, for on_loop.
        self._loop_engines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopEngine] = (
            weakref.WeakKeyDictionary()
        )
        self._loop_engines_lock = threading.Lock()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def on_loop(self, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking database code on the event loop, its statements awaited.

        ``work`` is ordinary synchronous code (units of work, reads); while it
        runs, this database's sessions use an asyncio connection of the running
        loop and every statement yields to the loop until its result arrives.
        Anything else ``work`` blocks on (a socket, a sleep) blocks the loop:
        use it only for work that waits on nothing but this database.

        At most ``db_loop_concurrency`` units run at once; the others wait their
        turn, in order, before they start. Unbounded, a saturated loop keeps
        dozens of transactions open, each waiting its turn on the loop between
        statements while holding its row locks (a hot product's stock).
        """
        current = self._loop_engine()
        async with current.turns:
            token = _on_loop.set((self, current.binds))
            try:
                return cast(T, await greenlet_spawn(functools.partial(work, *args, **kwargs)))
            finally:
                _on_loop.reset(token)

    def _loop_engine(self) -> _LoopEngine:
        if self.is_sqlite:
            raise ValueError("on_loop needs PostgreSQL; SQLite runs its writes inline")
        loop = asyncio.get_running_loop()
        found = self._loop_engines.get(loop)
        if found is not None:
            return found
        from sqlalchemy.ext.asyncio import create_async_engine

        with self._loop_engines_lock:
            found = self._loop_engines.get(loop)
            if found is None:
                engine = create_async_engine(self.url, **_pool_options(self.settings))
                # Lookups (an order's read, its transactionless unit) get a pool
                # of their own that stays in autocommit: switching a transaction
                # pool's connection to autocommit and back, and its ROLLBACK on
                # return, cost the loop four times as much per checkout.
                lookups = create_async_engine(
                    self.url,
                    isolation_level="AUTOCOMMIT",
                    skip_autocommit_rollback=True,
                    **_pool_options(self.settings),
                )
                for each in (engine, lookups):
                    _ping_when_idle(each.sync_engine)
                found = _LoopEngine(
                    engine,
                    lookups,
                    _Binds.of(engine.sync_engine, sqlite=False, lookups=lookups.sync_engine),
                    asyncio.Semaphore(self.settings.db_loop_concurrency),
                )
                self._loop_engines[loop] = found
        return found

    def _current(self) -> _Binds:
        on_loop = _on_loop.get()
        if on_loop is not None and on_loop[0] is self:
            return on_loop[1]
        return self._binds

    @contextmanager
    def unit_of_work(self, *, wait: bool = True) -> Iterator[UnitOfWork]:
        """Open one write transaction; commit on success, roll back on any error.

        With ``wait=False`` (SQLite only) raise :class:`WriteLockBusy` at once,
        having done nothing, if another thread or process holds the write lock;
        and so does a transaction the unit begins after a rollback (an answer
        stored after its work was undone) if another process took it meanwhile.
        """
        with self._writer(wait):
            binds = self._current()
            sessions = binds.sessions if wait else binds.no_wait_sessions
            uow = UnitOfWork(sessions(), postgres=not self.is_sqlite, lookups=binds.lookups)
            try:
                if not wait:  # BEGIN IMMEDIATE now: WriteLockBusy if taken
                    uow.session.connection()
                yield uow
                uow.commit()
            except BaseException:
                uow.rollback()
                raise
            finally:
                uow.close()
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
        session = self._current().read_sessions()
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
        with self._current().lookups.connect() as conn:
            yield conn

    def fetch(self, statement: Executable, params: Mapping[str, Any]) -> Sequence[Any]:
        """All rows of a one-statement read on a :meth:`read_connection`, by column name.

        On SQLite straight from the DB-API cursor where it can (see ``_Direct``),
        for the reads of the hottest paths.
        """
        with self.read_connection() as conn:
            return _rows(conn, statement, params)

    async def dispose_on_loop(self) -> None:
        """Close the asyncio engine of the running loop, if :meth:`on_loop` made one."""
        with self._loop_engines_lock:
            found = self._loop_engines.pop(asyncio.get_running_loop(), None)
        if found is not None:
            await found.engine.dispose()
            await found.lookups.dispose()

    def dispose(self) -> None:
        self.engine.dispose()
        with self._loop_engines_lock:
            engines = [
                engine
                for found in self._loop_engines.values()
                for engine in (found.engine, found.lookups)
            ]
            self._loop_engines.clear()
        for engine in engines:
            # Their loops are gone or elsewhere: drop the pools without I/O.
            engine.sync_engine.dispose(close=False)


@dataclass(frozen=True, slots=True)
class _Guard:
    """A held-back write's check: the number of rows it must return, else an error."""

    slot: int
    expect: int
    otherwise: Callable[[], BaseException]


# Raised by opsline_expect (migration 0007) when a guard fails; its detail is the guard's number.
GUARD_FAILED = "OL001"


class UnitOfWork:
    """One transaction plus the callbacks to run after it commits."""

    def __init__(
        self, session: Session, *, postgres: bool = False, lookups: Engine | None = None
    ) -> None:
        self._session = session
        self._postgres = postgres
        self._lookups = lookups
        self._connection: Connection | None = None
        self._outside: Connection | None = None  # PostgreSQL: autocommit, for lookup
        self._after_commit: list[Callable[[], None]] = []
        self._last: list[Callable[[], None]] = []
        self._later: list[tuple[Executable, Mapping[str, Any]]] = []
        self._guards: list[_Guard] = []
        self._returned: dict[int, Callable[[Any], None]] = {}  # slot in _later: its reader
        self._committed = False
        self.info: dict[str, Any] = {}

    @property
    def session(self) -> Session:
        """The ORM session of the transaction; writes queued with :meth:`execute_later`
        are sent first, so that what the session reads includes them."""
        if self._later:
            self.send()
        return self._session

    @property
    def bind(self) -> Engine | Connection:
        """What the transaction runs on (its engine's dialect and URL); sends nothing."""
        return self._session.get_bind()

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

    def lookup(self, statement: Executable, params: Mapping[str, Any] | None = None) -> Any:
        """Run a read that needs neither this unit's writes nor its snapshot.

        On PostgreSQL, before the unit has opened its transaction, it runs in
        autocommit on a connection of its own (no ``BEGIN``): a unit whose
        statements are lookups and held-back writes then commits them as one
        statement. Otherwise it runs in the transaction.
        """
        if self._transactionless():
            return self._outside_connection().execute(statement, params)
        return self.connection.execute(statement, params)

    def execute_later(
        self,
        statement: Executable,
        params: Mapping[str, Any],
        *,
        expect: int | None = None,
        otherwise: Callable[[], BaseException] | None = None,
        returned: Callable[[Any], None] | None = None,
    ) -> None:
        """A write whose outcome nothing in the transaction waits for.

        On PostgreSQL it is held back and sent with the next statement run by
        :meth:`execute` (or on its own before the session or :attr:`connection`
        is used, and at commit), so writes that return nothing cost no round
        trip of their own. ``statement`` is an INSERT, UPDATE or DELETE whose
        values are named parameters (see :func:`values_insert`), or a SELECT
        without FROM run for its effect (``pg_notify``), which goes with the
        writes at commit or when something reads, or a SELECT with ``expect``:
        a check that the rows it read are still as the use case assumed, made
        in the same statement as the writes. An error it raises (a
        constraint) surfaces from that later statement; the unit of work rolls
        back all the same. Elsewhere it runs at once.

        ``expect``: the statement (which then has a RETURNING clause) must
        return that many rows; if not, the unit is rolled back and the error
        ``otherwise()`` makes is raised where the write is sent. On PostgreSQL
        the check runs inside the statement that carries the write.

        ``returned``: the statement returns one row (a RETURNING clause), which is
        given to ``returned`` once the write is sent (an id the database assigns,
        for a message after commit), by column name; on PostgreSQL it comes back
        as columns of the statement that carries the write.
        """
        if expect is not None and otherwise is None:
            raise ValueError("execute_later(expect=...) needs otherwise=")
        if not self._postgres:
            if returned is not None:
                [row] = _rows(self.connection, statement, params)
                returned(row)
                return
            rows = _run_write(self.connection, statement, params, count_rows=expect is not None)
            if expect is not None and rows != expect:
                self.rollback()
                raise cast(Callable[[], BaseException], otherwise)()
            return
        if expect is not None:
            self._guards.append(
                _Guard(len(self._later), expect, cast(Callable[[], BaseException], otherwise))
            )
        if returned is not None:
            self._returned[len(self._later)] = returned
        self._later.append((statement, params))

    def execute(self, statement: Executable, params: Mapping[str, Any] | None = None) -> Any:
        """Run ``statement`` now, with the writes queued by :meth:`execute_later`.

        On PostgreSQL those writes ride in the same statement as data-modifying
        CTEs: one round trip. They run on the statement's snapshot, so the
        statement must not read rows they write (use :attr:`connection`, which
        sends them first, for that). Like theirs, its values must be named
        parameters (see :func:`values_insert`). Returns the statement's result.
        Guarded writes are sent first, on their own.
        """
        if self._guards or self._returned or any(isinstance(s, Select) for s, _ in self._later):
            self.send()  # checks, SELECTs and returned rows go in a statement of their own
        if not self._later:
            return self._conn().execute(statement, params)
        later, self._later = self._later, []
        return self._conn().execute(*_carrying(statement, params or {}, later))

    def fetch(self, statement: Executable, params: Mapping[str, Any]) -> Sequence[Any]:
        """:meth:`execute`'s rows, by column name (an INSERT's RETURNING, say); on
        SQLite straight from the DB-API cursor where it can (see ``_Direct``)."""
        if not self._postgres:
            return _rows(self.connection, statement, params)
        return cast(Sequence[Any], self.execute(statement, params).all())

    def send(self) -> None:
        """Send the held-back writes now, in one statement, and check their guards."""
        if self._later:
            self._send_later(self._conn())

    def _send_later(self, conn: Connection) -> None:
        later, self._later = self._later, []
        guards, self._guards = self._guards, []
        returned, self._returned = self._returned, {}
        if not guards and not returned and not any(isinstance(s, Select) for s, _ in later):
            # the last write carries the others
            statement, params = later.pop()
            _run_write(conn, *_carrying(statement, params, later), count_rows=False)
            return
        statement, merged = _closing(
            later, tuple((g.slot, g.expect) for g in guards), tuple(sorted(returned))
        )
        try:
            if not returned:
                _run_write(conn, statement, merged, count_rows=False)
                return
            [row] = _rows(conn, statement, merged)
        except DBAPIError as exc:
            failed = _failed_guard(exc)
            if failed is None:
                raise
            self.rollback()
            raise guards[failed].otherwise() from None
        values = row._asdict()
        for slot, reader in sorted(returned.items()):
            prefix = f"r{slot}_"
            reader(
                SimpleNamespace(
                    **{k.removeprefix(prefix): v for k, v in values.items() if k.startswith(prefix)}
                )
            )

    def _conn(self) -> Connection:
        self._session.flush()
        if self._connection is None:
            self._connection = self._session.connection()
        return self._connection

    def _outside_connection(self) -> Connection:
        if self._outside is None:
            self._outside = cast(Engine, self._lookups).connect()
        return self._outside

    def _transactionless(self) -> bool:
        """PostgreSQL, and the unit has not opened its transaction (nor has work for one)."""
        if not self._postgres or self._lookups is None or self._connection is not None:
            return False
        session = self._session
        return not (session.in_transaction() or session.new or session.dirty or session.deleted)

    @property
    def connection(self) -> Connection:
        """The transaction's connection, for Core statements on hot paths.

        Statements run here skip the ORM's execution layer. Pending ORM objects
        are flushed first, as the session's autoflush would, and so are the
        writes queued with :meth:`execute_later`.
        """
        if self._later:
            self.send()
        return self._conn()

    def flush(self) -> None:
        self.session.flush()

    def commit(self) -> None:
        """Commit (again, harmlessly, if nothing happened since the last commit).

        A PostgreSQL unit that never opened its transaction sends its held-back
        writes as one statement in autocommit: atomic by itself.
        """
        self.run_last()
        if self._later:
            self._send_later(
                self._outside_connection() if self._transactionless() else self._conn()
            )
        self._session.commit()
        self._committed = True

    def rollback(self) -> None:
        """Undo everything so far, side effects included; the unit stays usable."""
        self._session.rollback()
        self._connection = None
        if self._outside is not None:
            self._outside.rollback()  # nothing to undo in autocommit; resets its state
        self._later.clear()
        self._guards.clear()
        self._returned.clear()
        self._last.clear()
        self._after_commit.clear()
        self.info.clear()
        self._committed = False

    def close(self) -> None:
        self._session.close()
        if self._outside is not None:
            self._outside.close()
            self._outside = None

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


def _rows(conn: Connection, statement: Executable, params: Mapping[str, Any]) -> Sequence[Any]:
    """``statement``'s rows by column name: from the DB-API cursor where it can (SQLite)."""
    direct = _direct(statement, conn)
    if direct is not None and direct.covers(params):
        return direct.run(conn, params)
    return conn.execute(statement, params).all()


def _run_write(
    conn: Connection, statement: Executable, params: Mapping[str, Any], *, count_rows: bool
) -> int:
    """Run a write now; the number of rows it returned if ``count_rows``.

    Straight on the DB-API cursor where it can (see :class:`_Direct`): nothing
    SQLAlchemy's execution path does (result objects, typed rows) is wanted by
    a write whose outcome is at most a row count.
    """
    direct = _direct(statement, conn, typed_rows=False)
    if direct is None or not direct.covers(params):
        result = conn.execute(statement, params)
        return len(result.all()) if count_rows else 0
    rows = direct.run(conn, params, typed=False)
    return len(rows) if count_rows else 0


_REQUIRED: Any = object()


@dataclass(frozen=True, slots=True)
class _Direct:
    """A statement compiled once for the DB-API cursor.

    SQLAlchemy's execution path costs some 30 µs a statement on SQLite, about
    what SQLite takes to run a short insert or an indexed lookup itself, and on
    PostgreSQL a statement carrying a dozen writes spends longer building its
    parameters than psycopg takes to send it. For the hottest paths a statement
    is compiled once into its SQL, each parameter's name, value when not given
    (a value bound in the statement) and conversion, and each result column's
    name and conversion: SQLAlchemy's own bind and result processors, from the
    types (on PostgreSQL, whose result processors depend on the type the server
    reports, once per set of reported types). Rows come back as named tuples.
    While anything listens to the engine's statements (``before_cursor_execute``:
    tests, tracing) statements go through SQLAlchemy, so that they are seen.
    """

    sql: str
    names: tuple[str, ...]
    defaults: tuple[Any, ...]
    converters: tuple[Callable[[Any], Any] | None, ...]
    named: bool  # the DB-API takes a mapping (PostgreSQL), not a sequence (SQLite)
    # The result columns (SELECT, RETURNING): their types, and a named tuple of
    # their names (None when the names can't be a named tuple's: no typed rows).
    types: tuple[TypeEngine[Any], ...]
    row: type[tuple[Any, ...]] | None
    # The result processors by the type codes the cursor reported (SQLite: none).
    readers: dict[tuple[Any, ...], tuple[Callable[[Any], Any] | None, ...]]

    def covers(self, params: Mapping[str, Any]) -> bool:
        return all(
            name in params or default is not _REQUIRED
            for name, default in zip(self.names, self.defaults, strict=True)
        )

    def run(self, conn: Connection, params: Mapping[str, Any], *, typed: bool = True) -> list[Any]:
        """The statement's rows: typed as SQLAlchemy's if ``typed``, else as the DB-API's."""
        values = [
            value if convert is None else convert(value)
            for value, convert in zip(
                map(params.get, self.names, self.defaults), self.converters, strict=True
            )
        ]
        bound: Any = dict(zip(self.names, values, strict=True)) if self.named else values
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(self.sql, bound)
            description = cursor.description
            rows = cast(list[Any], cursor.fetchall()) if description is not None else []
        except conn.dialect.loaded_dbapi.Error as exc:
            # A lost connection is found and invalidated by the unit's rollback.
            # Its values hidden as the engine hides them: they can be customers' data.
            raise DBAPIError.instance(
                self.sql,
                bound,
                exc,
                conn.dialect.loaded_dbapi.Error,
                hide_parameters=conn.engine.hide_parameters,
                dialect=conn.dialect,
            ) from exc
        finally:
            cursor.close()
        if not typed or self.row is None or not rows:
            return rows
        codes = tuple(column[1] for column in description)
        readers = self.readers.get(codes)
        if readers is None:
            dialect = conn.dialect
            readers = tuple(
                t.dialect_impl(dialect).result_processor(dialect, code)
                for t, code in zip(self.types, codes, strict=True)
            )
            if len(self.readers) < 8:  # one set, bar a type made again (an enum's oid)
                self.readers[codes] = readers
        make = self.row._make  # type: ignore[attr-defined]
        if not any(readers):
            return [make(raw) for raw in rows]
        return [
            make([v if read is None else read(v) for v, read in zip(raw, readers, strict=True)])
            for raw in rows
        ]


# By the statement's id and dialect; the statement is kept, so that its id is not reused.
_DIRECT: dict[tuple[int, str], tuple[Executable, _Direct | None]] = {}
_DIRECT_MAX = 512


def _direct(statement: Executable, conn: Connection, *, typed_rows: bool = True) -> _Direct | None:
    """``statement`` compiled for ``conn``'s DB-API cursor, or None where only
    SQLAlchemy runs it: a statement listener; typed rows wanted of columns
    without plain names; expanding or callable parameters, escaped parameter
    names, values computed in Python."""
    dialect = conn.dialect
    if conn.dispatch.before_cursor_execute:
        return None
    key = (id(statement), dialect.name)
    found = _DIRECT.get(key)
    if found is not None and found[0] is statement:
        direct = found[1]
    else:
        direct = _compile_direct(statement, dialect)
        if len(_DIRECT) >= _DIRECT_MAX:
            _DIRECT.clear()  # statements are module constants or cached shapes: refilled at once
        _DIRECT[key] = (statement, direct)
    if direct is not None and typed_rows and direct.types and direct.row is None:
        return None
    return direct


def _compile_direct(statement: Executable, dialect: Dialect) -> _Direct | None:
    compiled = cast(ClauseElement, statement).compile(dialect=dialect)
    if (
        not isinstance(compiled, SQLCompiler)
        or compiled.literal_execute_params
        or compiled.post_compile_params
        or compiled.insert_prefetch
        or compiled.update_prefetch
        or compiled.escaped_bind_names
    ):
        return None
    if compiled.positional:
        if compiled.positiontup is None:
            return None
        names = tuple(compiled.positiontup)
    else:
        names = tuple(compiled.binds)
    binds = [compiled.binds[name] for name in names]
    if any(bind.callable is not None for bind in binds):
        return None
    columns: list[Any] = []
    if isinstance(statement, Select):
        columns = list(statement.selected_columns)
    elif compiled.isinsert or compiled.isupdate or compiled.isdelete:
        columns = list(getattr(statement, "_returning", ()))
    else:
        return None
    keys = [column.key for column in columns]
    plain = (
        bool(keys)
        and all(
            isinstance(k, str)
            and k.isidentifier()
            and not k.startswith("_")
            and not keyword.iskeyword(k)
            for k in keys
        )
        and len(set(keys)) == len(keys)
    )
    types = tuple(column.type for column in columns)
    return _Direct(
        compiled.string,
        names,
        tuple(_REQUIRED if bind.required else bind.value for bind in binds),
        tuple(bind.type.dialect_impl(dialect).bind_processor(dialect) for bind in binds),
        not compiled.positional,
        types,
        namedtuple("Row", keys) if plain else None,
        {}
        if dialect.name != "sqlite"
        else {
            (None,) * len(types): tuple(
                t.dialect_impl(dialect).result_processor(dialect, None) for t in types
            )
        },
    )


def values_insert(
    table: Table, rows: Sequence[Mapping[str, Any]], *, returning: tuple[str, ...] = ()
) -> tuple[Insert, dict[str, Any]]:
    """One INSERT of ``rows`` (same keys each), and its parameters.

    Every value is a named parameter, as :meth:`UnitOfWork.execute_later` and
    :meth:`UnitOfWork.execute` need; the statement is built once per table,
    columns, number of rows and ``returning`` columns.
    """
    columns = tuple(rows[0])
    params = {f"{column}_{i}": row[column] for i, row in enumerate(rows) for column in columns}
    return _values_insert(table, columns, len(rows), returning), params


@functools.lru_cache(maxsize=256)
def _values_insert(
    table: Table, columns: tuple[str, ...], count: int, returning: tuple[str, ...]
) -> Insert:
    def value(column: str, i: int) -> BindParameter[Any]:
        return bindparam(f"{column}_{i}", type_=table.c[column].type)

    # One row as VALUES, more as SELECTs joined by UNION ALL: a multi-row
    # VALUES list has no cache key in SQLAlchemy, so it would compile every time.
    if count == 1:
        stmt = insert(table).values({column: value(column, 0) for column in columns})
    else:
        rows = [select(*(value(column, i) for column in columns)) for i in range(count)]
        stmt = insert(table).from_select(columns, union_all(*rows))
    if returning:
        return stmt.returning(*(table.c[column] for column in returning))
    # inline: defaults the database computes are not fetched (fits in a CTE).
    return stmt.inline()


def _carrying(
    statement: Executable,
    params: Mapping[str, Any],
    later: list[tuple[Executable, Mapping[str, Any]]],
) -> tuple[Executable, dict[str, Any]]:
    """``statement`` with the ``later`` writes as data-modifying CTEs, and all parameters.

    Every statement's parameters get a prefix of its own (``c_`` for the carrier,
    ``w<n>_`` for the writes), so that equal names never meet: SQLAlchemy also
    reads an INSERT's columns from the names of the parameters it is given.
    """
    if not later:
        return statement, dict(params)
    merged = {f"c_{name}": value for name, value in params.items()}
    for slot, (_, values) in enumerate(later):
        merged.update({f"w{slot}_{name}": value for name, value in values.items()})
    return _with_ctes(statement, tuple(s for s, _ in later)), merged


@functools.lru_cache(maxsize=512)
def _with_ctes(statement: Executable, later: tuple[Executable, ...]) -> Executable:
    # Built once per combination (statements are module constants or cached
    # shapes): a reused statement object keeps its cache key and compiled form.
    ctes = [_prefixed(s, f"w{slot}_").cte(f"w{slot}") for slot, s in enumerate(later)]
    return cast(Executable, cast(HasCTE, _prefixed(statement, "c_")).add_cte(*ctes))


def _closing(
    later: list[tuple[Executable, Mapping[str, Any]]],
    guards: tuple[tuple[int, int], ...],
    returned: tuple[int, ...],
) -> tuple[Executable, dict[str, Any]]:
    """The ``later`` statements as one SELECT, and all their parameters.

    Writes become its data-modifying CTEs, held-back SELECTs (a ``pg_notify``)
    give it their columns, each guard's check is a column of it, and so is each
    column that the writes in ``returned`` (slots of ``later``) return
    (``r<slot>_<name>``).
    """
    merged: dict[str, Any] = {}
    for slot, (_, values) in enumerate(later):
        merged.update({f"w{slot}_{name}": value for name, value in values.items()})
    for number, (_, expect) in enumerate(guards):
        merged[f"g{number}"] = expect
    slots = tuple(slot for slot, _ in guards)
    return _closing_select(tuple(s for s, _ in later), slots, returned), merged


@functools.lru_cache(maxsize=256)
def _closing_select(
    later: tuple[Executable, ...], slots: tuple[int, ...], returned: tuple[int, ...]
) -> Executable:
    ctes: dict[int, Any] = {}
    columns: list[Any] = []
    for slot, statement in enumerate(later):
        prefixed = _prefixed(statement, f"w{slot}_")
        if isinstance(statement, Select) and slot not in slots:
            columns.extend(
                column.label(f"s{slot}_{i}") for i, column in enumerate(prefixed.selected_columns)
            )
        else:
            ctes[slot] = prefixed.cte(f"w{slot}")
    for slot in returned:
        columns.extend(
            select(column).scalar_subquery().label(f"r{slot}_{column.key}")
            for column in ctes[slot].c
        )
    checks = [
        func.opsline_expect(
            select(func.count()).select_from(ctes[slot]).scalar_subquery()
            == bindparam(f"g{number}", type_=Integer()),
            number,
            type_=Boolean(),
        ).label(f"g{number}")
        for number, slot in enumerate(slots)
    ]
    return select(*checks, *columns).add_cte(*ctes.values())


def _failed_guard(exc: DBAPIError) -> int | None:
    """The number of the guard whose check raised ``exc``, if that is what it is."""
    if getattr(exc.orig, "sqlstate", None) != GUARD_FAILED:
        return None
    diag = getattr(exc.orig, "diag", None)
    detail = getattr(diag, "message_detail", None)
    return int(detail) if detail is not None and detail.isdigit() else None


def _prefixed(statement: Executable, prefix: str) -> Any:
    """``statement`` with ``prefix`` before the name of each of its named parameters."""

    def rename(element: ExternallyTraversible, **_: Any) -> ExternallyTraversible | None:
        if isinstance(element, BindParameter) and not element.unique:
            return bindparam(prefix + element.key, type_=element.type)
        return None

    return replacement_traverse(cast(ExternallyTraversible, statement), {}, rename)


def _create_engine(settings: Settings, url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_pool_size * 2,
            # A failed statement's error names its statement but not its values:
            # they can be password hashes, tokens' digests, customers' data.
            hide_parameters=True,
        )
        _configure_sqlite(engine, settings)
        return engine
    _cache_long_statements()
    # Workers, the CLI and the thread pool: every checkout is pinged first, so a
    # server restart costs them nothing.
    return create_engine(url, pool_pre_ping=True, **_pool_options(settings))


# psycopg turns a query's ``%(name)s`` placeholders into ``$n`` by parsing it in
# Python, and keeps the result in an LRU cache (128 queries) only for queries
# under 4 KiB with at most 50 parameters. A unit of work's closing statement (its
# held-back writes as CTEs, see UnitOfWork.execute_later) is longer, yet its
# shape repeats with every order: parsing it anew each time was a sixth of the
# server's samples in a profile of PostgreSQL orders. The cache stays bounded
# (128 entries of at most these sizes).
CACHED_STATEMENT_LENGTH = 32 * 1024
CACHED_STATEMENT_PARAMS = 1000


def _cache_long_statements() -> None:
    from psycopg import _queries

    _queries.MAX_CACHED_STATEMENT_LENGTH = max(
        _queries.MAX_CACHED_STATEMENT_LENGTH, CACHED_STATEMENT_LENGTH
    )
    _queries.MAX_CACHED_STATEMENT_PARAMS = max(
        _queries.MAX_CACHED_STATEMENT_PARAMS, CACHED_STATEMENT_PARAMS
    )


def _pool_options(settings: Settings) -> dict[str, Any]:
    return {
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_pool_size,
        "pool_recycle": 1800,
        "hide_parameters": True,
    }


# A pooled connection idle for longer is pinged before use, and replaced if dead.
PING_AFTER_IDLE_SECONDS = 5.0


def _ping_when_idle(engine: Engine) -> None:
    """Check a connection that sat in the pool for a while before handing it out.

    For the event loop's engine, which serves requests: ``pool_pre_ping`` pings
    on every checkout, one round trip more per transaction on a busy server
    whose connections were all in use a moment ago. A connection idle past
    ``PING_AFTER_IDLE_SECONDS`` (a server restart, a network drop or a proxy's
    idle cut while nobody used it) is pinged and, if dead, replaced before use.
    One that died within that time fails its request's statement (a 5xx, safe
    to retry: orders carry an idempotency key); the pool then drops every
    connection older than the failure, so the next requests reconnect.
    """

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["opsline_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("opsline_idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception:
            alive = False
        if not alive:
            raise DisconnectionError("connection died while idle in the pool")


def prepare_sqlite_connection(
    dbapi_connection: Any, settings: Settings, *, busy_timeout_ms: int
) -> None:
    """What every SQLite connection of the process is set up with, whichever pool holds it."""
    # Take transaction control away from the sqlite3 module: we emit BEGIN.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA synchronous={settings.sqlite_synchronous}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    # Checkpoint every N pages of WAL rather than SQLite's 1,000: a page written
    # by many commits is copied back to the database once. Per connection: the
    # commit that passes the mark runs the checkpoint, whichever pool it is in.
    cursor.execute(f"PRAGMA wal_autocheckpoint={int(settings.sqlite_wal_autocheckpoint)}")
    cursor.close()


def _configure_sqlite(engine: Engine, settings: Settings) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        prepare_sqlite_connection(dbapi_connection, settings, busy_timeout_ms=30_000)

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
