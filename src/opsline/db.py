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

The statements a unit of work builds and runs (held-back writes as CTEs, their
guards, statements straight on the DB-API cursor) are in
:mod:`opsline._statements`; engines, SQLite's connection set-up and write lock,
and the sessions bound to an engine in :mod:`opsline._connections`. The names
other modules use from them are re-exported here.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

import structlog
from sqlalchemy import JSON, DateTime, MetaData, TypeDecorator, Uuid
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.selectable import Select
from sqlalchemy.util import greenlet_spawn

from opsline._connections import WriteLockBusy as WriteLockBusy
from opsline._connections import _Binds, _create_engine, _ping_when_idle, _pool_options
from opsline._connections import prepare_sqlite_connection as prepare_sqlite_connection
from opsline._connections import spin_begin_immediate as spin_begin_immediate
from opsline._statements import _carrying, _closing, _failed_guard, _rows, _run_write
from opsline._statements import _direct as _direct
from opsline._statements import values_insert as values_insert
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

        On SQLite straight from the DB-API cursor where it can (``_statements._Direct``),
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
        SQLite straight from the DB-API cursor where it can (``_statements._Direct``)."""
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


def as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
