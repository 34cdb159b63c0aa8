"""One PostgreSQL ``LISTEN`` connection shared by every subscriber of a pub/sub.

A thread owns the connection: it ``LISTEN``\\ s while at least one subscriber
is registered and ``UNLISTEN``\\ s once the last has left, and hands each
notification to the queues registered for its logical channel (the payload's
``"channel"``). A subscriber costs a queue, not a connection, so a process
holds one connection however many live streams it serves.

When the connection drops, the thread reconnects with exponential backoff
(``BACKOFF_MIN`` to ``BACKOFF_MAX`` seconds) and ``LISTEN``\\ s again; the
subscribers keep their queues. Notifications sent meanwhile are lost (delivery
is best effort): readers re-read the state they follow.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import orjson
import structlog

log = structlog.get_logger(__name__)

APPLICATION_NAME = "opsline-realtime"
# How long the thread waits for notifications before it looks at its
# subscribers again (an UNLISTEN after the last left, a close).
WAKE_SECONDS = 0.5
# How long a new subscriber waits for the LISTEN to be in effect.
READY_SECONDS = 5.0
BACKOFF_MIN, BACKOFF_MAX = 0.1, 5.0

# How many messages a subscriber that does not read keeps (the newest): they are
# hints to re-read state, so older ones can go, and a stalled stream (a client
# that stopped reading) holds a bounded backlog, not every message of its tenant.
BACKLOG = 256


class Mailbox:
    """A subscriber's messages, at most ``size`` of them, the oldest dropped first."""

    def __init__(self, size: int = BACKLOG) -> None:
        self._items: deque[dict[str, Any]] = deque(maxlen=size)
        self._ready = threading.Condition()
        self.dropped = 0

    def put(self, message: dict[str, Any]) -> None:
        with self._ready:
            if len(self._items) == self._items.maxlen:
                self.dropped += 1
            self._items.append(message)
            self._ready.notify()

    def get(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The oldest message kept, or None after ``timeout`` seconds."""
        with self._ready:
            if not self._ready.wait_for(lambda: bool(self._items), timeout):
                return None
            return self._items.popleft()


Target = Mailbox


class Listener:
    """The shared ``LISTEN`` on ``pg_channel`` of the database at ``conninfo``."""

    def __init__(self, conninfo: str, pg_channel: str) -> None:
        self._conninfo = conninfo
        self._pg_channel = pg_channel
        self._changed = threading.Condition()
        self._routes: dict[str, list[Target]] = {}
        self._listening = False  # the LISTEN is in effect on the live connection
        self._closed = False
        self._thread: threading.Thread | None = None
        self._backoff = BACKOFF_MIN

    def add(self, target: Target, channels: set[str]) -> None:
        """Deliver the messages of ``channels`` to ``target`` from now on.

        Returns once the ``LISTEN`` is in effect, or after ``READY_SECONDS``
        while the database cannot be reached (then delivery starts once it can).
        """
        with self._changed:
            if self._closed:
                return
            for channel in channels:
                self._routes.setdefault(channel, []).append(target)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="realtime-listener", daemon=True
                )
                self._thread.start()
            self._changed.notify_all()
            ready = self._changed.wait_for(
                lambda: self._listening or self._closed, timeout=READY_SECONDS
            )
        if not ready:
            log.warning("realtime_listener_not_ready", waited_s=READY_SECONDS)

    def remove(self, target: Target, channels: set[str]) -> None:
        with self._changed:
            for channel in channels:
                targets = self._routes.get(channel, [])
                if target in targets:
                    targets.remove(target)
                if not targets:
                    self._routes.pop(channel, None)

    def close(self) -> None:
        """Stop the thread and close the connection (waits up to a few wake-ups)."""
        with self._changed:
            self._closed = True
            self._routes.clear()
            self._changed.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=4 * WAKE_SECONDS)

    def _run(self) -> None:
        while True:
            try:
                self._serve()
                return  # closed
            except Exception as exc:
                log.warning("realtime_listener_lost", error=repr(exc), retry_in_s=self._backoff)
            with self._changed:
                self._listening = False
                if self._changed.wait_for(lambda: self._closed, timeout=self._backoff):
                    return
            self._backoff = min(2 * self._backoff, BACKOFF_MAX)

    def _serve(self) -> None:
        """Hold one connection until closed; raise when it fails."""
        import psycopg

        with psycopg.connect(
            self._conninfo, autocommit=True, application_name=APPLICATION_NAME
        ) as connection:
            listening = False
            while True:
                with self._changed:
                    while not (self._closed or self._routes or listening):
                        self._changed.wait()
                    if self._closed:
                        return
                    wanted = bool(self._routes)
                    if listening and not wanted:
                        # Before the UNLISTEN: a subscriber arriving now waits for the LISTEN.
                        self._listening = False
                if wanted != listening:
                    connection.execute(("LISTEN " if wanted else "UNLISTEN ") + self._pg_channel)
                    listening = wanted
                    if wanted:
                        self._backoff = BACKOFF_MIN
                        with self._changed:
                            self._listening = True
                            self._changed.notify_all()
                    continue
                for notify in connection.notifies(timeout=WAKE_SECONDS):
                    self._deliver(notify.payload)

    def _deliver(self, payload: str) -> None:
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            log.warning("realtime_payload_not_json", bytes=len(payload))
            return
        channel = message.get("channel") if isinstance(message, dict) else None
        if not isinstance(channel, str):
            return
        with self._changed:
            targets = list(self._routes.get(channel, ()))
        for target in targets:
            target.put(dict(message))
