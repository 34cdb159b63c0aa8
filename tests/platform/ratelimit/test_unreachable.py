"""Redis unreachable: rate limits answer 503 before any work, on the loop and off it."""

from __future__ import annotations

import asyncio

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
