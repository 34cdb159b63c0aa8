"""Distributed locks in Redis for critical sections that span several statements.

``SET key token NX PX ttl`` takes the lock; release is a compare-and-delete in
one Lua script, so a holder whose lock expired never deletes a successor's.
Acquisition retries with jittered backoff until a deadline, then gives up with
a 409. Correctness must never depend on these locks (the database's
conditional updates and constraints are the truth); they only keep contending
requests from doing work that would be refused anyway. Redis unreachable is a
503 before any work; a release that fails leaves the lock to its expiry.

Inside ``Database.on_loop`` (a request's use case on the event loop) every
round trip and every wait between tries is awaited (``opsline.platform.loop``):
a request waiting for a lock suspends only itself.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import redis
import redis.asyncio
import structlog

from opsline.platform import loop
from opsline.platform.http.problems import Conflict, ServiceUnavailable

log = structlog.get_logger(__name__)

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


class LockBusy(Conflict):
    type_slug = "lock-busy"
    title = "Resource busy"


class LocksUnavailable(ServiceUnavailable):
    type_slug = "locks-unavailable"
    title = "Lock service unavailable"


class RedisLocks:
    def __init__(self, url: str, *, ttl_ms: int = 5000, wait_ms: int = 2000) -> None:
        self.client = redis.Redis.from_url(
            url, socket_timeout=loop.REDIS_SECONDS, socket_connect_timeout=loop.REDIS_SECONDS
        )
        self.ttl_ms = ttl_ms
        self.wait_ms = wait_ms
        self._release = self.client.register_script(_RELEASE)
        self._on_loop = loop.PerLoop(
            lambda: _AsyncClient(url), lambda client: client.redis.aclose()
        )

    @contextmanager
    def hold(self, keys: Sequence[str]) -> Iterator[None]:
        """Hold every key (taken in sorted order, so holders never deadlock)."""
        token = secrets.token_hex(16)
        taken: list[str] = []
        try:
            for key in sorted(set(keys)):
                try:
                    self._acquire(key, token)
                except (redis.RedisError, TimeoutError) as exc:
                    log.warning("lock_unavailable", error=type(exc).__name__)
                    raise LocksUnavailable(
                        "the lock service is unreachable; retry shortly"
                    ) from exc
                taken.append(key)
            yield
        finally:
            for key in reversed(taken):
                try:
                    self._release_key(key, token)
                except (redis.RedisError, TimeoutError) as exc:  # it expires after ttl_ms
                    log.warning("lock_release_failed", error=type(exc).__name__)

    def _acquire(self, key: str, token: str) -> None:
        deadline = time.monotonic() + self.wait_ms / 1000
        delay = 0.002
        while not self._take(key, token):
            if time.monotonic() >= deadline:
                raise LockBusy(f"{key.rsplit(':', 1)[-1]} is busy; retry shortly")
            loop.sleep(random.uniform(0, delay))  # full jitter
            delay = min(delay * 2, 0.1)

    def _take(self, key: str, token: str) -> bool:
        return bool(
            loop.call(
                lambda: self.client.set(key, token, nx=True, px=self.ttl_ms),
                lambda: self._on_loop.get().redis.set(key, token, nx=True, px=self.ttl_ms),
            )
        )

    def _release_key(self, key: str, token: str) -> None:
        loop.call(
            lambda: self._release(keys=[key], args=[token]),
            lambda: self._on_loop.get().release(keys=[key], args=[token]),
        )

    def close(self) -> None:
        self.client.close()


class _AsyncClient:
    """The asyncio client of one event loop, with the release script registered on it."""

    def __init__(self, url: str) -> None:
        self.redis = redis.asyncio.Redis.from_pool(loop.redis_pool(url))
        self.release = self.redis.register_script(_RELEASE)
