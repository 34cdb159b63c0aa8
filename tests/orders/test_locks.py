"""The optional Redis lock layer: exclusive, released only by its holder, and correct."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from redis import Redis as RedisClient

from opsline.platform.locks import LockBusy, LocksUnavailable, RedisLocks
from opsline.settings import Settings, SettingsError, load_settings
from tests.helpers import assert_problem
from tests.orders.conftest import Shop

pytestmark = pytest.mark.redis


def test_a_held_lock_refuses_others_until_released(redis_url: str) -> None:
    locks = RedisLocks(redis_url, ttl_ms=5000, wait_ms=50)
    key = f"test:lock:{uuid.uuid4().hex}"
    try:
        with locks.hold([key]):
            with pytest.raises(LockBusy), locks.hold([key]):
                pass
        with locks.hold([key]):
            pass
    finally:
        locks.close()


def test_an_expired_holder_never_releases_its_successor(redis_url: str) -> None:
    locks = RedisLocks(redis_url, ttl_ms=50, wait_ms=500)
    key = f"test:lock:{uuid.uuid4().hex}"
    successor_holds = threading.Event()
    try:
        with locks.hold([key]):
            time.sleep(0.1)  # our lock expires meanwhile
            thread = threading.Thread(target=lambda: _hold_briefly(locks, key, successor_holds))
            thread.start()
            assert successor_holds.wait(2)
        # We released: the successor's lock must still be there.
        assert locks.client.get(key) is not None
        thread.join()
    finally:
        locks.close()


def _hold_briefly(locks: RedisLocks, key: str, holding: threading.Event) -> None:
    locks.ttl_ms = 2000
    with locks.hold([key]):
        holding.set()
        time.sleep(0.3)


def test_redis_unreachable_is_a_503_before_any_work() -> None:
    # Nothing listens on port 1 of loopback: connection refused at once.
    locks = RedisLocks("redis://127.0.0.1:1/0", wait_ms=50)
    ran = False
    try:
        with pytest.raises(LocksUnavailable) as refused, locks.hold(["test:lock:a"]):
            ran = True
    finally:
        locks.close()
    assert not ran
    assert refused.value.status == 503 and "retry" in refused.value.detail


def test_lock_layer_without_redis_is_a_settings_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSLINE_ORDERS_REDIS_LOCK", "true")
    monkeypatch.delenv("OPSLINE_REDIS_URL", raising=False)
    with pytest.raises(SettingsError, match="OPSLINE_REDIS_URL"):
        load_settings()


class TestOrdersWithLocks:
    @pytest.fixture
    def settings_overrides(self, redis_url: str) -> dict[str, object]:
        return {"redis_url": redis_url, "orders_redis_lock": True, "payment_latency_max_ms": 1}

    @pytest.fixture
    def redis(self, redis_url: str) -> Iterator[RedisClient]:
        client = RedisClient.from_url(redis_url)
        yield client
        client.close()

    def test_orders_work_under_the_lock_layer(
        self, shop: Shop, settings: Settings, redis: RedisClient
    ) -> None:
        assert settings.orders_redis_lock
        product = shop.product(stock=1)
        assert shop.order([(product["id"], 1)]).status_code == 201
        shortage = assert_problem(shop.order([(product["id"], 1)]), 409)
        assert shortage["type"].endswith("/insufficient-stock")
        assert shop.stock(product["id"]) == 0
        assert not list(
            redis.scan_iter(match=f"opsline:lock:{shop.member.tenant_id}:*")
        )  # released

    def test_a_held_product_lock_makes_an_order_retry_then_409_until_released(
        self, shop: Shop, redis: RedisClient
    ) -> None:
        held, free = shop.product(sku="HELD", stock=5), shop.product(sku="FREE", stock=5)
        key = f"opsline:lock:{shop.member.tenant_id}:product:{held['id']}"
        token = f"test-{uuid.uuid4().hex}"
        assert redis.set(key, token, nx=True, px=30_000)
        try:
            started = time.monotonic()
            busy = assert_problem(shop.order([(held["id"], 1)], key="held-1"), 409)
            waited = time.monotonic() - started
            # Only the held product's lock is contended: another product is not held up.
            assert shop.order([(free["id"], 1)]).status_code == 201
        finally:
            ours = redis.get(key)
            redis.delete(key)
        assert busy["type"].endswith("/lock-busy") and held["id"] in busy["detail"]
        assert waited >= 1.5  # it retried for its wait (2 s) before giving up
        assert ours == token.encode()  # the refused order never released our lock
        assert shop.stock(held["id"]) == 5
        # The refusal claimed nothing, not even the key: the same request now succeeds.
        retried = shop.order([(held["id"], 1)], key="held-1")
        assert retried.status_code == 201, retried.text
        assert "Idempotent-Replayed" not in retried.headers
        assert shop.stock(held["id"]) == 4
