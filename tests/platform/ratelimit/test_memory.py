"""The in-memory rate-limit storage: limits hold, and a busy API starts no threads."""

from __future__ import annotations

import threading
import time

from opsline.platform.ratelimit import RateLimiter, SweptMemoryStorage


def test_limit_is_enforced_per_key_and_reported() -> None:
    limiter = RateLimiter()
    states = [limiter.hit("3/minute", "principal", "a") for _ in range(4)]
    assert [s.allowed for s in states] == [True, True, True, False]
    assert [s.remaining for s in states[:3]] == [2, 1, 0]
    assert states[3].headers()["Retry-After"]
    assert limiter.hit("3/minute", "principal", "b").allowed  # another key, its own budget


def test_hits_start_no_threads() -> None:
    limiter = RateLimiter()
    limiter.hit("1000/second", "warm-up")
    time.sleep(0.05)  # the timer the library starts once, at construction, is done
    before = threading.active_count()
    most = before
    for i in range(300):
        limiter.hit("1000/second", "principal", str(i % 7))
        most = max(most, threading.active_count())
        if i % 50 == 0:
            time.sleep(0.015)  # upstream starts a 10 ms timer thread on the next hit
    assert most == before


def test_expired_keys_are_swept() -> None:
    limiter = RateLimiter()
    storage = limiter.storage
    assert isinstance(storage, SweptMemoryStorage)
    storage.SWEEP_SECONDS = 0.0
    limiter.hit("5/second", "principal", "gone")
    assert storage.expirations
    time.sleep(2.1)  # the sliding window keeps the previous window's counter too
    limiter.hit("5/second", "principal", "other")
    assert not any("gone" in key for key in storage.expirations)
