"""Engines and their connections, for :mod:`opsline.db`.

Creating an engine (its pool, psycopg's cache of parsed statements), pinging a
pooled connection that sat idle, setting up every SQLite connection (WAL, its
pragmas) and opening its transactions (``BEGIN IMMEDIATE``, waiting for the
write lock or raising :class:`WriteLockBusy`), and the sessions and autocommit
lookups bound to an engine (:class:`_Binds`).

:mod:`opsline.db` imports this module and re-exports what other modules use;
this module imports nothing of it.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from opsline.settings import Settings


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
        spin_begin_immediate(dbapi_connection, wait=wait)
    finally:
        dbapi_connection.execute("PRAGMA busy_timeout=30000")


def spin_begin_immediate(dbapi_connection: Any, *, wait: bool = True) -> None:
    """``BEGIN IMMEDIATE`` on a connection whose busy handler does not wait
    (``busy_timeout=0``), retried after sleeps from 50 µs doubling to 2 ms for up
    to ``WRITE_LOCK_WAIT_SECONDS``: SQLite's own handler sleeps 1, 2, 5, 10 ms...
    With ``wait=False`` one attempt: :class:`WriteLockBusy` if the lock is held."""
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
