"""Waking idle workers when jobs are enqueued.

Three channels, cheapest first:

- in-process: enqueue's after-commit hook sets every :class:`threading.Event`
  registered for the same database URL (the embedded default: pickup in
  well under a millisecond);
- other processes on SQLite: a thread polls ``PRAGMA data_version`` on its own
  connection, a read of one counter that changes whenever another connection
  commits (no table is read);
- PostgreSQL: ``LISTEN opsline_jobs``; enqueue issues ``pg_notify`` inside its
  transaction, so the notification is delivered only on commit.

Polling (``job_poll_seconds``) stays as the last fallback in the worker.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections import defaultdict

import structlog
from sqlalchemy.engine import Engine

log = structlog.get_logger(__name__)

CHANNEL = "opsline_jobs"

_lock = threading.Lock()
_waiters: dict[str, set[threading.Event]] = defaultdict(set)


@functools.lru_cache(maxsize=64)
def url_key(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def register(key: str, event: threading.Event) -> None:
    with _lock:
        _waiters[key].add(event)


def unregister(key: str, event: threading.Event) -> None:
    with _lock:
        _waiters[key].discard(event)


def notify(key: str) -> None:
    with _lock:
        events = list(_waiters.get(key, ()))
    for event in events:
        event.set()


class SqliteWatcher:
    """Sets ``event`` whenever another connection commits to the SQLite file."""

    def __init__(self, path: str, event: threading.Event, interval: float) -> None:
        self._path = path
        self._event = event
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="opsline-sqlite-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        connection = sqlite3.connect(self._path, check_same_thread=False)
        try:
            last = connection.execute("PRAGMA data_version").fetchone()[0]
            while not self._stop.wait(self._interval):
                current = connection.execute("PRAGMA data_version").fetchone()[0]
                if current != last:
                    last = current
                    self._event.set()
        except sqlite3.Error:
            log.exception("sqlite_watch_failed")
        finally:
            connection.close()


class PostgresListener:
    """Sets ``event`` on every ``NOTIFY opsline_jobs``; reconnects after errors."""

    def __init__(self, conninfo: str, event: threading.Event) -> None:
        self._conninfo = conninfo
        self._event = event
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="opsline-pg-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception:
                log.warning("pg_listen_reconnecting", exc_info=True)
                # A lost connection may have hidden notifications: wake once.
                self._event.set()
                self._stop.wait(1.0)

    def _listen(self) -> None:
        import psycopg

        with psycopg.connect(self._conninfo, autocommit=True) as connection:
            connection.execute(f"LISTEN {CHANNEL}")
            while not self._stop.is_set():
                for _ in connection.notifies(timeout=0.5, stop_after=1):
                    self._event.set()


def psycopg_conninfo(engine: Engine) -> str:
    url = engine.url.set(drivername="postgresql")
    return url.render_as_string(hide_password=False)
