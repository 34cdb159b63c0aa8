"""Real parallel clients over loopback HTTP against a running server.

Each scenario starts an Opsline server (API plus embedded workers) on its own
fresh database, fires requests from many threads at once, and checks the
invariants: never oversold, never negative, stock conserved, no 5xx.
"""

from __future__ import annotations

import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import select

from opsline.orders.models import PaymentAttempt
from opsline.platform.engine.worker import Worker
from tests.orders.conftest import Live

pytestmark = pytest.mark.slow


SETTINGS: dict[str, object] = {
    "payment_latency_min_ms": 1,
    "payment_latency_max_ms": 10,
    "payment_success_rate": 0.8,
    "payment_seed": "concurrency",
    "embedded_workers": 4,
    "embedded_scheduler": False,
    "db_pool_size": 20,
}


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return SETTINGS


def _parallel(calls: list[Any], threads: int = 32) -> list[Any]:
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda call: call(), calls))


class TestHotProduct:
    @pytest.fixture
    def settings_overrides(self, settings_overrides: dict[str, object]) -> dict[str, object]:
        # Every payment succeeds, so no failed payment hands stock back mid-test.
        return {**settings_overrides, "payment_success_rate": 1.0}

    def test_200_concurrent_orders_for_50_units_sell_exactly_50(self, live: Live) -> None:
        product = live.product("HOT", stock=50)
        responses = _parallel(
            [lambda i=i: live.order([(product, 1)], key=f"hot-{i}") for i in range(200)]
        )
        statuses = Counter(r.status_code for r in responses)
        assert statuses == {201: 50, 409: 150}, statuses
        assert live.stock(product) == 0
        orders = live.settled()
        assert Counter(o.status for o in orders) == {"PAID": 50}

    def test_50_concurrent_requests_with_one_key_make_one_order(self, live: Live) -> None:
        product = live.product("ONCE", stock=100)
        responses = _parallel(
            [lambda: live.order([(product, 1)], key="one-key") for _ in range(50)]
        )
        statuses = Counter(r.status_code for r in responses)
        assert set(statuses) <= {201, 409}, statuses
        assert not any(r.status_code >= 500 for r in responses)
        created_ids = {r.json()["id"] for r in responses if r.status_code == 201}
        assert len(created_ids) == 1
        assert live.stock(product) == 99
        different = live.order([(product, 2)], key="one-key")
        assert different.status_code == 422
        other_user = live.order([(product, 1)], key="one-key", headers=live.owner)
        assert other_user.status_code == 201
        assert other_user.json()["id"] not in created_ids


def test_200_concurrent_multi_line_orders_conserve_stock(live: Live) -> None:
    initial = {live.product(f"P{i}", stock=150): 150 for i in range(3)}
    products = list(initial)
    rng = random.Random(7)
    baskets = [
        [(p, rng.randint(1, 4)) for p in rng.sample(products, rng.randint(1, 3))]
        for _ in range(200)
    ]
    responses = _parallel(
        [lambda b=b, i=i: live.order(b, key=f"multi-{i}") for i, b in enumerate(baskets)]
    )
    assert all(r.status_code in (201, 409) for r in responses), Counter(
        r.status_code for r in responses
    )
    orders = live.settled()
    held: Counter[str] = Counter()
    with live.runtime.db.read() as session:
        from opsline.orders.models import OrderLine

        lines = session.execute(
            select(OrderLine.order_id, OrderLine.product_id, OrderLine.quantity)
        ).all()
    kept = {o.id for o in orders if o.status not in ("CANCELLED", "FAILED")}
    for order_id, product_id, quantity in lines:
        if order_id in kept:
            held[str(product_id)] += quantity
    for product, start in initial.items():
        final = live.stock(product)
        assert final >= 0
        assert start == final + held[product]


@pytest.mark.parametrize("settings_overrides", [{**SETTINGS, "embedded_workers": 0}])
def test_cancel_racing_the_payment_worker_never_both(live: Live) -> None:
    product = live.product("RACE", stock=500)
    placed = _parallel(
        [lambda i=i: live.order([(product, 1)], key=f"race-{i}") for i in range(500)]
    )
    assert all(r.status_code == 201 for r in placed)
    ids = [r.json()["id"] for r in placed]
    random.Random(11).shuffle(ids)
    # Released together: the workers take payments oldest first while the cancels
    # come in another order, so the two sides race over the same orders.
    worker = Worker(live.runtime.db, live.runtime.settings, concurrency=4)
    worker.start()
    try:
        cancels = _parallel(
            [
                lambda i=i: live.http.post(f"/api/v1/orders/{i}/cancel", headers=live.member)
                for i in ids
            ]
        )
        settled = {str(o.id): o for o in live.settled()}
    finally:
        worker.stop(grace=5)
    statuses = Counter(o.status for o in settled.values())
    assert set(statuses) <= {"CANCELLED", "PAID", "FAILED"}, statuses
    # The race really happened: some cancels won, some lost to the worker.
    assert statuses["CANCELLED"] >= 1 and statuses["PAID"] + statuses["FAILED"] >= 1, statuses
    for order_id, cancelled in zip(ids, cancels, strict=True):
        final = settled[order_id].status
        if cancelled.status_code == 200:
            assert final == "CANCELLED" and cancelled.json()["status"] == "CANCELLED"
        else:
            assert cancelled.status_code == 409, cancelled.text
            assert final in ("PAID", "FAILED")
            assert cancelled.json()["current_status"] in ("PROCESSING", "PAID", "FAILED")
    # Stock came back exactly for cancelled and failed orders, never for paid ones.
    assert live.stock(product) == statuses["CANCELLED"] + statuses["FAILED"]
    with live.runtime.db.read() as session:
        attempts = session.execute(select(PaymentAttempt.order_id, PaymentAttempt.outcome)).all()
    charged = {str(order_id) for order_id, outcome in attempts if outcome == "succeeded"}
    cancelled_ids = {i for i, o in settled.items() if o.status == "CANCELLED"}
    assert not {str(order_id) for order_id, _ in attempts} & cancelled_ids  # never charged
    assert charged == {i for i, o in settled.items() if o.status == "PAID"}
