"""Redis round trips awaited on the event loop inside Database.on_loop, blocking elsewhere."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import redis
from sqlalchemy.util import greenlet_spawn
from sqlalchemy.util.concurrency import in_greenlet

from opsline.platform import loop
from opsline.platform.http.db_work import run_read, run_write
from opsline.platform.locks import LockBusy, RedisLocks
from opsline.platform.ratelimit import RateLimiter
from opsline.platform.realtime.pubsub import RedisPubSub
from opsline.platform.runtime import Runtime
from opsline.settings import Settings

T = TypeVar("T")


def on_loop(work: Callable[[], T], *, alongside: int = 0) -> tuple[T, int]:
    """``work()`` in a greenlet on a fresh loop, as ``Database.on_loop`` runs it, and how
    many times a task of the same loop ticked meanwhile (``alongside`` ticks at most)."""

    async def main() -> tuple[T, int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while ticks < alongside:
                await asyncio.sleep(0.001)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        try:
            return await greenlet_spawn(work), ticks
        finally:
            ticker.cancel()
            await loop.close_running_loop()

    return asyncio.run(main())


def test_call_blocks_outside_on_loop_and_awaits_inside() -> None:
    async def answer() -> str:
        await asyncio.sleep(0)
        return "awaited"

    def work() -> tuple[bool, str]:
        return in_greenlet(), loop.call(lambda: "blocked", answer, within=1.0)

    assert work() == (False, "blocked")
    assert on_loop(work)[0] == (True, "awaited")


def test_call_on_the_loop_fails_after_its_deadline() -> None:
    async def never() -> str:
        await asyncio.sleep(60)
        return "late"

    def work() -> str:
        return loop.call(lambda: "blocked", never, within=0.05)

    with pytest.raises(TimeoutError):
        on_loop(work)


def test_sleep_on_the_loop_suspends_only_the_caller() -> None:
    def nap() -> float:
        started = time.monotonic()
        loop.sleep(0.05)
        return time.monotonic() - started

    slept, ticks = on_loop(nap, alongside=1000)
    assert slept >= 0.05
    assert ticks >= 5  # a blocking sleep would have let the other task tick not once


def test_units_on_loop_by_backend_and_services(tmp_path: Any) -> None:
    def units_on_loop(**overrides: Any) -> bool:
        return Settings(var_dir=tmp_path, **overrides).units_on_loop

    pg = "postgresql://postgres@127.0.0.1:5432/test"
    assert units_on_loop()
    assert units_on_loop(database_url=pg)
    assert units_on_loop(database_url=pg, redis_url="redis://127.0.0.1:6379/0")
    # SQLite's units run inline: an await inside one would let another into the write lock.
    assert not units_on_loop(redis_url="redis://127.0.0.1:6379/0")
    assert not units_on_loop(database_url="sqlite:///elsewhere.db", redis_url="redis://h/0")
    # A broker's publish blocks.
    assert not units_on_loop(database_url=pg, broker_url="amqp://guest:guest@127.0.0.1:5672/%2F")


@pytest.mark.redis
class TestRedisOnTheLoop:
    def test_a_rate_limit_counts_the_same_on_the_loop_and_off_it(self, redis_url: str) -> None:
        limiter = RateLimiter(redis_url)
        key = uuid.uuid4().hex
        for _ in range(3):
            assert limiter.hit("5/minute", "test", key).allowed

        def two_more() -> list[tuple[bool, int]]:
            states = [limiter.hit("5/minute", "test", key) for _ in range(3)]
            return [(state.allowed, state.remaining) for state in states]

        assert on_loop(two_more)[0] == [(True, 1), (True, 0), (False, 0)]
        refused = limiter.hit("5/minute", "test", key)
        assert not refused.allowed and "Retry-After" in refused.headers()

    def test_a_lock_taken_on_the_loop_excludes_a_thread_and_is_released(
        self, redis_url: str
    ) -> None:
        locks = RedisLocks(redis_url, wait_ms=50)
        key = f"test:lock:{uuid.uuid4().hex}"
        outcome: dict[str, Any] = {}

        def hold_while_a_thread_tries() -> None:
            with locks.hold([key]):

                def other() -> None:
                    try:
                        with locks.hold([key]):
                            outcome["thread"] = "took it"
                    except LockBusy:
                        outcome["thread"] = "busy"

                thread = threading.Thread(target=other)
                thread.start()
                loop.sleep(0.2)  # the thread gives up after 50 ms
                thread.join()

        on_loop(hold_while_a_thread_tries)
        assert outcome["thread"] == "busy"
        with locks.hold([key]):  # released on the loop
            pass

    def test_waiting_for_a_lock_on_the_loop_lets_the_loop_run(self, redis_url: str) -> None:
        locks = RedisLocks(redis_url, wait_ms=150)
        key = f"test:lock:{uuid.uuid4().hex}"
        blocking = redis.Redis.from_url(redis_url)
        blocking.set(key, "someone else", px=5000)

        def wait_in_vain() -> str:
            try:
                with locks.hold([key]):
                    return "took it"
            except LockBusy:
                return "busy"

        try:
            result, ticks = on_loop(wait_in_vain, alongside=1000)
        finally:
            blocking.delete(key)
            blocking.close()
        assert result == "busy"
        assert ticks >= 20  # 150 ms of awaited waits between tries

    def test_a_publish_on_the_loop_reaches_a_subscriber(self, redis_url: str) -> None:
        pubsub = RedisPubSub(redis_url)
        channel = f"test:{uuid.uuid4().hex}"
        subscription = pubsub.subscribe(channel)
        try:
            time.sleep(0.05)
            on_loop(lambda: pubsub.publish_many([(channel, {"n": 1}), (channel, {"n": 2})]))
            got = [subscription.get(timeout=2), subscription.get(timeout=2)]
        finally:
            subscription.close()
            pubsub.close()
        assert [message["n"] for message in got if message] == [1, 2]


@pytest.mark.redis
class TestRequestsWithRedis:
    """PostgreSQL with Redis: a request's unit, its rate limit and its publish on the loop."""

    @pytest.fixture
    def settings_overrides(self, redis_url: str) -> dict[str, object]:
        return {"redis_url": redis_url, "rate_limit_api": "1000/minute"}

    def test_units_run_on_the_loop_thread(self, runtime: Runtime) -> None:
        if runtime.db.is_sqlite:
            pytest.skip("SQLite with Redis sends units to the thread pool")
        seen: dict[str, Any] = {}

        def write(wait: bool) -> None:
            seen["write"] = (threading.get_ident(), in_greenlet())
            state = runtime.rate_limiter.hit("1000/minute", "test", uuid.uuid4().hex)
            seen["limited"] = state.remaining

        def read() -> None:
            seen["read"] = (threading.get_ident(), in_greenlet())

        async def main() -> int:
            try:
                await run_write(runtime.db, write)
                await run_read(runtime.db, read)
                return threading.get_ident()
            finally:
                await runtime.db.dispose_on_loop()
                await loop.close_running_loop()

        loop_thread = asyncio.run(main())
        assert seen["write"] == (loop_thread, True)
        assert seen["read"] == (loop_thread, True)
        assert seen["limited"] == 999
