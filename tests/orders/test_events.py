"""OrderCreated and OrderCancelled: one event per transition, none for a replay or a no-op.

The log is read through the engine's admin API (``GET /api/v1/events``), as an
operator or a replaying listener would see it.
"""

from __future__ import annotations

from typing import Any

from tests.helpers import assert_problem
from tests.orders.conftest import Shop, wait_for

REPLAY_HEADER = "Idempotent-Replayed"


def _events(shop: Shop, event_type: str) -> list[dict[str, Any]]:
    """The payloads of the tenant's logged events of ``event_type``."""
    response = shop.client.get(
        "/api/v1/events", params={"type": event_type, "limit": 100}, headers=shop.owner.headers
    )
    assert response.status_code == 200, response.text
    page = response.json()
    assert page.get("next_cursor") is None
    return [event["payload"] for event in page["items"]]


def test_placing_an_order_and_replaying_it_publish_one_order_created(shop: Shop) -> None:
    product = shop.product(stock=5, price="4.20")
    first = shop.order([(product["id"], 2)], key="created-once")
    assert first.status_code == 201, first.text
    replayed = shop.order([(product["id"], 2)], key="created-once")
    assert replayed.status_code == 201 and replayed.headers[REPLAY_HEADER] == "true"
    assert replayed.json()["id"] == first.json()["id"]
    [created] = _events(shop, "orders.order_created")
    assert created["order_id"] == first.json()["id"]
    assert created["user_id"] == str(shop.member.user_id)
    assert created["total"] == "8.40"
    assert shop.stock(product["id"]) == 3


def test_an_order_refused_for_stock_publishes_nothing(shop: Shop) -> None:
    product = shop.product(stock=1)
    for _ in range(2):  # the refusal, then its replay
        assert_problem(shop.order([(product["id"], 2)], key="short"), 409)
    assert _events(shop, "orders.order_created") == []


def test_cancelling_twice_publishes_one_order_cancelled(shop: Shop) -> None:
    product = shop.product(stock=5)
    order = shop.order([(product["id"], 3)]).json()
    path = f"/api/v1/orders/{order['id']}/cancel"
    for _ in range(2):
        cancelled = shop.client.post(
            path, json={"reason": "changed my mind"}, headers=shop.member.headers
        )
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "CANCELLED"
    [event] = _events(shop, "orders.order_cancelled")
    assert event["order_id"] == order["id"] and event["reason"] == "changed my mind"
    assert shop.stock(product["id"]) == 5  # restored once
    assert len(_events(shop, "orders.order_created")) == 1


def test_a_refused_cancel_of_a_paid_order_publishes_nothing(shop: Shop, worker: Any) -> None:
    product = shop.product(stock=5)
    order = shop.order([(product["id"], 1)]).json()
    wait_for(lambda: _events(shop, "orders.order_paid"))
    refused = shop.client.post(f"/api/v1/orders/{order['id']}/cancel", headers=shop.member.headers)
    assert assert_problem(refused, 409)["current_status"] == "PAID"
    assert _events(shop, "orders.order_cancelled") == []
    assert [e["order_id"] for e in _events(shop, "orders.order_paid")] == [order["id"]]
    assert shop.stock(product["id"]) == 4
