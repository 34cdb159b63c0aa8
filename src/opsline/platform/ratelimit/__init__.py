"""Rate limits with the ``limits`` library: in memory by default, Redis when configured.

Limiters are keyed by what is limited (a principal, an IP, an IP and an email).
``hit`` consumes one unit and answers whether it was allowed along with the
numbers for the ``RateLimit-*`` and ``Retry-After`` headers. The strategy is
the sliding-window counter: constant work per hit whatever the limit (a moving
window keeps one timestamp per hit, which costs more the higher the limit).

With Redis, a hit from a use case on the event loop (``Database.on_loop``) is
awaited there with the library's asyncio strategy, on the same keys
(``opsline.platform.loop``); anywhere else it blocks.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis
import structlog
from limits import RateLimitItem, WindowStats, parse
from limits.aio import storage as aio_storage
from limits.aio import strategies as aio_strategies
from limits.storage import MemoryStorage, RedisStorage, Storage
from limits.strategies import SlidingWindowCounterRateLimiter

from opsline.platform import loop
from opsline.platform.http.problems import ServiceUnavailable, TooManyRequests

log = structlog.get_logger(__name__)


class RateLimitsUnavailable(ServiceUnavailable):
    type_slug = "rate-limits-unavailable"
    title = "Rate limits unavailable"


@contextmanager
def _storage_errors() -> Iterator[None]:
    """Redis unreachable (or failing) is a 503 before any work, not a 500."""
    try:
        yield
    except (redis.RedisError, TimeoutError) as exc:
        log.warning("rate_limits_unavailable", error=type(exc).__name__)
        raise RateLimitsUnavailable(
            "the rate-limit service is unreachable; retry shortly", headers={"Retry-After": "1"}
        ) from exc


@dataclass(frozen=True, slots=True)
class RateState:
    allowed: bool
    limit: int
    remaining: int
    reset_after: int

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_after),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, self.reset_after))
        return headers


class SweptMemoryStorage(MemoryStorage):
    """The library's in-memory storage, minus a thread start every 10 ms of traffic.

    Upstream schedules its sweep of expired keys on a new timer thread 10 ms
    after a hit whenever the last one has finished, so a busy API starts up to
    a hundred threads a second. Counters expire on read either way; here the
    sweep that frees their memory runs inline, in the thread of a hit, at most
    once every ``SWEEP_SECONDS``.
    """

    SWEEP_SECONDS = 1.0

    def __init__(self) -> None:
        super().__init__()
        self._next_sweep = 0.0

    # Overrides the name-mangled ``MemoryStorage.__schedule_expiry``.
    def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + self.SWEEP_SECONDS
            self._MemoryStorage__expire_events()  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=256)
def _parse(rate: str) -> RateLimitItem:
    return parse(rate)


class _LoopLimiter:
    """The asyncio strategy of one event loop, on a connection pool of its own."""

    def __init__(self, url: str) -> None:
        self.pool = loop.redis_pool(url)
        # connection_pool is a documented option the stubs' **options type leaves out.
        storage = aio_storage.RedisStorage(
            "async+" + url,
            implementation="redispy",
            connection_pool=self.pool,  # type: ignore[arg-type]
        )
        self.strategy = aio_strategies.SlidingWindowCounterRateLimiter(storage)

    async def hit(
        self, item: RateLimitItem, keys: tuple[str, ...], cost: int
    ) -> tuple[bool, WindowStats]:
        allowed = await self.strategy.hit(item, *keys, cost=cost)
        return allowed, await self.strategy.get_window_stats(item, *keys)


class RateLimiter:
    def __init__(self, redis_url: str | None = None) -> None:
        self.storage: Storage = RedisStorage(redis_url) if redis_url else SweptMemoryStorage()
        self._limiter = SlidingWindowCounterRateLimiter(self.storage)
        self._on_loop = (
            loop.PerLoop(lambda: _LoopLimiter(redis_url), lambda found: found.pool.aclose())
            if redis_url
            else None
        )

    def hit(self, rate: str | RateLimitItem, *keys: str, cost: int = 1) -> RateState:
        item = _parse(rate) if isinstance(rate, str) else rate
        with _storage_errors():
            if self._on_loop is None:  # in memory: nothing to wait for
                return _state(item, *self._hit(item, keys, cost))
            on_loop = self._on_loop
            return _state(
                item,
                *loop.call(
                    lambda: self._hit(item, keys, cost),
                    lambda: on_loop.get().hit(item, keys, cost),
                ),
            )

    def _hit(
        self, item: RateLimitItem, keys: tuple[str, ...], cost: int
    ) -> tuple[bool, WindowStats]:
        allowed = self._limiter.hit(item, *keys, cost=cost)
        return allowed, self._limiter.get_window_stats(item, *keys)

    def test(self, rate: str | RateLimitItem, *keys: str) -> RateState:
        """Check without consuming (e.g. refuse a login already over its failures)."""
        item = _parse(rate) if isinstance(rate, str) else rate
        with _storage_errors():
            allowed = self._limiter.test(item, *keys)
            return _state(item, allowed, self._limiter.get_window_stats(item, *keys))

    def enforce(self, rate: str, *keys: str, what: str) -> RateState:
        state = self.hit(rate, *keys)
        if not state.allowed:
            raise TooManyRequests(
                f"rate limit for {what} exceeded ({rate}); retry after {state.reset_after} s",
                headers=state.headers(),
            )
        return state

    def clear(self, rate: str, *keys: str) -> None:
        with _storage_errors():
            self._limiter.clear(_parse(rate), *keys)

    def check(self) -> None:
        if not self.storage.check():
            raise ConnectionError("rate-limit storage not reachable")


def _state(item: RateLimitItem, allowed: bool, stats: WindowStats) -> RateState:
    reset_after = max(0, math.ceil(stats.reset_time - time.time()))
    return RateState(allowed, item.amount, max(0, stats.remaining), reset_after)
