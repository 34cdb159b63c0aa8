"""The engine's own SQLite connections: a write lock taken by spinning, not sleeping.

SQLite's busy handler sleeps 1, 2, 5, 10, ... ms between attempts to take the
write lock, so two worker processes (or a worker and the API) contending for
it lose milliseconds per transaction. The engine's hot path (claim/ack
cycles, heartbeats, enqueue on a Database) therefore uses its own engine on
the same file with ``busy_timeout=0`` and retries ``BEGIN IMMEDIATE`` itself
with short exponential sleeps from 50 µs to 2 ms (30 s in total). Statements
after ``BEGIN IMMEDIATE`` never wait: the write lock is already held. On
PostgreSQL the database's own engine is used.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine

from opsline.db import Database, prepare_sqlite_connection, spin_begin_immediate

_lock = threading.Lock()
_engines: weakref.WeakKeyDictionary[Database, Engine] = weakref.WeakKeyDictionary()


def hot_engine(db: Database) -> Engine:
    """The engine for the engine's own short write transactions on ``db``.

    Disposed together with ``db.engine`` (``Database.dispose()``).
    """
    if not db.is_sqlite:
        return db.engine
    with _lock:
        engine = _engines.get(db)
        if engine is None:
            engine = _engines[db] = _create_sqlite_engine(db)
            event.listen(db.engine, "engine_disposed", lambda _e: _dispose(db))
        return engine


def _dispose(db: Database) -> None:
    with _lock:
        engine = _engines.pop(db, None)
    if engine is not None:
        engine.dispose()


def _create_sqlite_engine(db: Database) -> Engine:
    engine = create_engine(
        db.url,
        # The connect-time PRAGMAs may wait for a lock; BEGIN IMMEDIATE never does.
        connect_args={"check_same_thread": False, "timeout": 30},
        pool_size=4,
        max_overflow=8,
        hide_parameters=True,  # as the database's own engine: job arguments are customers' data
    )
    settings = db.settings

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        prepare_sqlite_connection(dbapi_connection, settings, busy_timeout_ms=0)

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        spin_begin_immediate(connection.connection.dbapi_connection)

    return engine
