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

Each worker listens through a :class:`Doorbell`, which it mutes while it holds
as many jobs as it can run: a full worker has nothing to do with news of more
jobs, and is woken by its own finished jobs, after which it claims from the
database anyway. A muted doorbell costs nothing: the SQLite watcher sleeps
until the worker has room again, instead of polling every millisecond and
waking the worker on every commit of a busy API; the PostgreSQL listener
empties its socket a few times a second instead of waking on every enqueue.
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
# How often a muted PostgreSQL listener empties its socket of notifications.
MUTED_DRAIN_SECONDS = 0.25

_lock = threading.Lock()


class Doorbell:
    """A worker's wake-up for new jobs, heard only while the worker has room."""

    def __init__(self, wake: threading.Event) -> None:
        self._wake = wake
        self.listening = threading.Event()
        self.listening.set()

    def ring(self) -> None:
        if self.listening.is_set():
            self._wake.set()

    def listen(self, listening: bool) -> None:
        if listening:
            self.listening.set()
        else:
            self.listening.clear()


_waiters: dict[str, set[Doorbell]] = defaultdict(set)


@functools.lru_cache(maxsize=64)
def url_key(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def register(key: str, doorbell: Doorbell) -> None:
    with _lock:
        _waiters[key].add(doorbell)


def unregister(key: str, doorbell: Doorbell) -> None:
    with _lock:
        _waiters[key].discard(doorbell)


def notify(key: str) -> None:
    with _lock:
        doorbells = list(_waiters.get(key, ()))
    for doorbell in doorbells:
        doorbell.ring()


class SqliteWatcher:
    """Rings ``doorbell`` whenever another connection commits to the SQLite file.

    Polls only while the doorbell listens: changes made while it was muted ring
    it once when it listens again, which the worker (claiming from the
    database as soon as it has room) does not need but takes as a spare look.
    """

    def __init__(self, path: str, doorbell: Doorbell, interval: float) -> None:
        self._path = path
        self._doorbell = doorbell
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
            listening = self._doorbell.listening
            while not self._stop.wait(self._interval):
                if not listening.is_set():
                    listening.wait(0.5)  # muted: sleep until the worker has room
                    continue
                current = connection.execute("PRAGMA data_version").fetchone()[0]
                if current != last:
                    last = current
                    self._doorbell.ring()
        except sqlite3.Error:
            log.exception("sqlite_watch_failed")
        finally:
            connection.close()


class PostgresListener:
    """Rings ``doorbell`` on every ``NOTIFY opsline_jobs``; reconnects after errors."""

    def __init__(self, conninfo: str, doorbell: Doorbell) -> None:
        self._conninfo = conninfo
        self._doorbell = doorbell
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
                self._doorbell.ring()
                self._stop.wait(1.0)

    def _listen(self) -> None:
        import psycopg

        listening = self._doorbell.listening
        with psycopg.connect(self._conninfo, autocommit=True) as connection:
            connection.execute(f"LISTEN {CHANNEL}")
            while not self._stop.is_set():
                if not listening.is_set():
                    # Muted: what arrives meanwhile waits in the socket and is
                    # drained in one read a few times a second, not one wake-up
                    # per enqueue (each a fight for the GIL with an embedding
                    # server's event loop). Drained, never left unread: the
                    # server would block on a full socket, holding back the
                    # notification queue for every listener.
                    listening.wait(MUTED_DRAIN_SECONDS)
                    heard = False
                    for _ in connection.notifies(timeout=0):
                        heard = True
                    if heard:
                        # Some may have come after the worker listened again.
                        self._doorbell.ring()
                    continue
                for _ in connection.notifies(timeout=0.5, stop_after=1):
                    self._doorbell.ring()


def psycopg_conninfo(engine: Engine) -> str:
    url = engine.url.set(drivername="postgresql")
    return url.render_as_string(hide_password=False)
