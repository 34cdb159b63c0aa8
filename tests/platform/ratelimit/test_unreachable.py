"""Redis unreachable: rate limits answer 503 before any work, on the loop and off it."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.util import greenlet_spawn

from opsline.platform import loop
from opsline.platform.ratelimit import RateLimiter, RateLimitsUnavailable
from tests.helpers import assert_problem

NOWHERE = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def test_a_hit_off_the_loop_is_a_503() -> None:
    with pytest.raises(RateLimitsUnavailable) as raised:
        RateLimiter(NOWHERE).hit("10/minute", "principal", "x")
    assert raised.value.status == 503
    assert raised.value.headers["Retry-After"] == "1"


def test_a_hit_on_the_loop_is_a_503() -> None:
    limiter = RateLimiter(NOWHERE)

    async def main() -> None:
        try:
            await greenlet_spawn(lambda: limiter.hit("10/minute", "principal", "x"))
        finally:
            await loop.close_running_loop()

    with pytest.raises(RateLimitsUnavailable):
        asyncio.run(main())


@pytest.fixture
def silent_redis() -> Iterator[str]:
    """A server on 127.0.0.1 that accepts connections and never answers (a hung Redis)."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    finally:
        stop.set()
        thread.join()
        for each in accepted:
            each.close()
        listener.close()


def test_a_hit_on_the_loop_that_redis_never_answers_is_a_503_in_time(
    silent_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The asyncio clients have no socket timeout: the call's own deadline ends the wait."""
    monkeypatch.setattr(loop, "REDIS_SECONDS", 0.3)
    limiter = RateLimiter(silent_redis)

    async def main() -> float:
        started = time.monotonic()
        try:
            with pytest.raises(RateLimitsUnavailable):
                await greenlet_spawn(lambda: limiter.hit("10/minute", "principal", "x"))
            return time.monotonic() - started
        finally:
            await loop.close_running_loop()

    assert 0.25 < asyncio.run(main()) < 5


class TestThroughTheApi:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"redis_url": NOWHERE, "embedded_workers": 0, "embedded_scheduler": False}

    def test_login_is_a_503_problem_naming_the_rate_limits(self, app_client: TestClient) -> None:
        response = app_client.post(
            "/api/v1/auth/login", json={"email": "someone@acme.example", "password": "x" * 12}
        )
        body = assert_problem(response, 503)
        assert body["type"].endswith("/rate-limits-unavailable")
        assert response.headers["Retry-After"] == "1"
