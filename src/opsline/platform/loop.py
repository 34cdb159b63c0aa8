"""Round trips to Redis from code that may run on the event loop.

:meth:`opsline.db.Database.on_loop` runs a request's synchronous use case in a
greenlet on the server's event loop, its statements awaited. The use case's
other round trips (the rate limit, the orders' lock, a publish after commit)
are awaited there as well, through :func:`call`: inside ``on_loop`` it awaits
the asynchronous form, anywhere else (a thread of the pool, a worker, the
CLI) it runs the blocking one (and :func:`sleep` likewise). The caller stays
plain synchronous code.

An asyncio client's connections belong to the loop that opened them, so each
loop gets clients of its own (:class:`PerLoop`); the server closes its loop's
with :func:`close_running_loop` when it stops.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import redis.asyncio
from sqlalchemy.util import await_
from sqlalchemy.util.concurrency import in_greenlet

T = TypeVar("T")
C = TypeVar("C")

# How long a call to Redis from the loop may take, all its round trips together.
REDIS_SECONDS = 2.0


def call(
    blocking: Callable[[], T],
    on_loop: Callable[[], Awaitable[T]],
    *,
    within: float | None = None,
) -> T:
    """``blocking()``, or inside ``Database.on_loop`` ``on_loop()`` awaited on the loop,
    where it fails with :class:`TimeoutError` after ``within`` seconds (default
    :data:`REDIS_SECONDS`).

    The deadline covers the whole call, however many round trips it makes: the
    loop's clients (on :func:`redis_pool`) have no socket timeout of their own,
    since redis-py wraps every send in ``asyncio.wait_for`` (a task per command)
    when they do. The blocking clients keep theirs.
    """
    if in_greenlet():
        return await_(_within(on_loop(), REDIS_SECONDS if within is None else within))
    return blocking()


def redis_pool(url: str) -> redis.asyncio.ConnectionPool:
    """A connection pool for an asyncio client of one loop: no socket timeout
    (:func:`call` puts a deadline around each call), a connect timeout."""
    return redis.asyncio.ConnectionPool.from_url(
        url, socket_timeout=None, socket_connect_timeout=REDIS_SECONDS
    )


async def _within(awaitable: Awaitable[T], seconds: float) -> T:
    async with asyncio.timeout(seconds):
        return await awaitable


def sleep(seconds: float) -> None:
    """``time.sleep``, which on the loop suspends only the caller."""
    if in_greenlet():
        await_(asyncio.sleep(seconds))
    else:
        time.sleep(seconds)


_all: weakref.WeakSet[PerLoop[Any]] = weakref.WeakSet()


class PerLoop(Generic[C]):
    """One client per event loop, made on first use by ``make`` and closed by ``close``."""

    def __init__(self, make: Callable[[], C], close: Callable[[C], Awaitable[object]]) -> None:
        self._make, self._close = make, close
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, C] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        _all.add(self)

    def get(self) -> C:
        """The running loop's client."""
        loop = asyncio.get_running_loop()
        found = self._clients.get(loop)
        if found is None:
            with self._lock:
                found = self._clients.get(loop)
                if found is None:
                    found = self._clients[loop] = self._make()
        return found

    async def close_running(self) -> None:
        with self._lock:
            found = self._clients.pop(asyncio.get_running_loop(), None)
        if found is not None:
            await self._close(found)


async def close_running_loop() -> None:
    """Close every :class:`PerLoop` client of the running loop."""
    for clients in list(_all):
        await clients.close_running()
