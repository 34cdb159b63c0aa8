"""Orders priced from what the process last saw of the session and the products.

The second order of a session for products it has ordered before is not read
first: its statement checks that the session and each product are unchanged.
When one changed, nothing is written and the order is read and placed again,
so the answer is the one a fresh read gives.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, event

from opsline.platform.last_seen import LastSeen
from opsline.platform.runtime import Runtime
from tests.helpers import assert_problem
from tests.orders.conftest import Shop


class _Statements:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def __call__(self, conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        self.sent.append(statement)

    def product_reads(self) -> int:
        return sum("FROM products" in s and "auth_sessions" in s for s in self.sent)


def _watching(shop: Shop, product_id: str, **body: Any) -> tuple[Any, _Statements]:
    statements = _Statements()
    event.listen(Engine, "before_cursor_execute", statements)
    try:
        response = shop.order([(product_id, 1)], **body)
    finally:
        event.remove(Engine, "before_cursor_execute", statements)
    return response, statements


def _orders(shop: Shop) -> int:
    listed = shop.client.get("/api/v1/orders", headers=shop.manager.headers).json()
    return len(listed["items"])


def test_a_seen_order_is_not_read_first(shop: Shop, runtime: Runtime) -> None:
    product = shop.product(stock=5)
    first, before = _watching(shop, product["id"])
    second, after = _watching(shop, product["id"])
    assert first.status_code == second.status_code == 201
    assert (before.product_reads(), after.product_reads()) == (1, 0)
    if not runtime.db.is_sqlite:
        # The session's check, the stock and the writes: one statement.
        assert [s.split()[0] for s in after.sent if "FROM products" not in s] == ["WITH"]
        assert "auth_sessions" in after.sent[0] and "UPDATE products" in after.sent[0]
    assert second.json()["total"] == "10.00"
    assert shop.stock(product["id"]) == 3


def test_a_price_changed_since_it_was_seen_is_the_price_charged(shop: Shop) -> None:
    product = shop.product(stock=5, price="10.00")
    assert shop.order([(product["id"], 1)]).status_code == 201
    patched = shop.client.patch(
        f"/api/v1/products/{product['id']}",
        json={"price": "12.50", "name": "Renamed"},
        headers=shop.manager.headers,
    )
    assert patched.status_code == 200, patched.text
    response, statements = _watching(shop, product["id"])
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["total"] == "12.50"
    [line] = body["lines"]
    assert (line["unit_price"], line["name"]) == ("12.50", "Renamed")
    assert statements.product_reads() == 1  # read again after the check failed
    assert shop.stock(product["id"]) == 3
    assert _orders(shop) == 2


def test_a_total_too_large_at_the_price_seen_is_judged_at_the_new_price(shop: Shop) -> None:
    """A refusal computed from what was seen is not the answer: the price fell."""
    product = shop.product(stock=20, price="500000000000.00")
    assert shop.order([(product["id"], 1)]).status_code == 201
    patched = shop.client.patch(
        f"/api/v1/products/{product['id']}",
        json={"price": "1.00"},
        headers=shop.manager.headers,
    )
    assert patched.status_code == 200, patched.text
    response = shop.order([(product["id"], 10)], key="fell")
    assert response.status_code == 201, response.text
    assert response.json()["total"] == "10.00"
    replay = shop.order([(product["id"], 10)], key="fell")
    assert (replay.status_code, replay.json()["total"]) == (201, "10.00")
    assert shop.stock(product["id"]) == 9


def test_currencies_mixed_as_seen_but_no_longer_are_one_order(shop: Shop) -> None:
    euros = shop.product(sku="EUR-1", stock=5)
    dollars = shop.product(sku="USD-1", stock=5, currency="USD")
    assert shop.order([(euros["id"], 1)]).status_code == 201
    assert shop.order([(dollars["id"], 1)]).status_code == 201
    patched = shop.client.patch(
        f"/api/v1/products/{euros['id']}", json={"currency": "USD"}, headers=shop.manager.headers
    )
    assert patched.status_code == 200, patched.text
    response = shop.order([(euros["id"], 1), (dollars["id"], 1)])
    assert response.status_code == 201, response.text
    assert (response.json()["currency"], response.json()["total"]) == ("USD", "20.00")
    assert (shop.stock(euros["id"]), shop.stock(dollars["id"])) == (3, 3)


def test_a_product_archived_since_it_was_seen_is_refused(shop: Shop) -> None:
    product = shop.product(stock=5)
    assert shop.order([(product["id"], 1)]).status_code == 201
    archived = shop.client.delete(f"/api/v1/products/{product['id']}", headers=shop.manager.headers)
    assert archived.status_code == 200
    body = assert_problem(shop.order([(product["id"], 1)]), 422)
    assert body["unknown_products"] == [product["id"]]
    assert shop.stock(product["id"]) == 4
    assert _orders(shop) == 1


def test_a_product_short_since_it_was_seen_names_what_is_left(shop: Shop) -> None:
    product = shop.product(stock=2)
    assert shop.order([(product["id"], 1)]).status_code == 201
    assert shop.order([(product["id"], 1)]).status_code == 201
    body = assert_problem(shop.order([(product["id"], 1)], key="short"), 409)
    assert body["short"] == [
        {"product_id": product["id"], "sku": product["sku"], "requested": 1, "available": 0}
    ]
    # The refusal is the key's answer, replayed as such.
    replay = shop.order([(product["id"], 1)], key="short")
    assert replay.status_code == 409
    assert replay.headers["idempotent-replayed"] == "true"
    assert shop.stock(product["id"]) == 0


@pytest.mark.parametrize(("role", "status"), [("viewer", 403), ("manager", 201)])
def test_a_role_changed_since_it_was_seen_decides(shop: Shop, role: str, status: int) -> None:
    """The order's check finds the role changed: the new one decides, and the
    rate limit counts the request once."""
    product = shop.product(stock=5)
    before = shop.order([(product["id"], 1)])
    assert before.status_code == 201
    changed = shop.client.patch(
        f"/api/v1/members/{shop.member.user_id}",
        json={"role": role},
        headers=shop.owner.headers,
    )
    assert changed.status_code == 200, changed.text
    response = shop.order([(product["id"], 1)])
    assert response.status_code == status, response.text
    # A problem response carries no rate-limit headers: the next request tells.
    after = shop.client.get("/api/v1/orders", headers=shop.member.headers)
    remaining = [int(r.headers["ratelimit-remaining"]) for r in (before, after)]
    assert remaining[0] - remaining[1] == 2
    assert shop.stock(product["id"]) == (4 if status == 403 else 3)
    assert _orders(shop) == (1 if status == 403 else 2)
    if status == 403:
        # The refused role is remembered: the next order is not placed on the old one.
        again, statements = _watching(shop, product["id"])
        assert again.status_code == 403
        assert not [s for s in statements.sent if "memberships.role = " in s]


def test_a_seen_order_with_an_api_key(shop: Shop) -> None:
    product = shop.product(stock=5)
    created = shop.client.post(
        "/api/v1/api-keys", json={"name": "shop", "role": "member"}, headers=shop.owner.headers
    )
    headers = {"X-API-Key": created.json()["key"]}
    body = {"items": [{"product_id": product["id"], "quantity": 1}]}
    reads = []
    for key in ("one", "two"):
        statements = _Statements()
        event.listen(Engine, "before_cursor_execute", statements)
        try:
            placed = shop.client.post(
                "/api/v1/orders", json=body, headers={**headers, "Idempotency-Key": key}
            )
        finally:
            event.remove(Engine, "before_cursor_execute", statements)
        assert placed.status_code == 201, placed.text
        reads.append(sum("FROM products" in s for s in statements.sent))
    # The key is checked on its own; the products are read for the first order only.
    assert reads == [1, 0]
    assert shop.stock(product["id"]) == 3


def test_last_seen_is_bounded_and_keeps_the_newest() -> None:
    seen: LastSeen[int, str] = LastSeen(3)
    for n in range(5):
        seen.put(n, str(n))
    assert len(seen) == 3
    assert [seen.get(n) for n in range(5)] == [None, None, "2", "3", "4"]
    seen.put(3, "three")  # replacing an entry evicts nothing
    assert len(seen) == 3 and seen.get(2) == "2" and seen.get(3) == "three"
    seen.forget(3)
    assert seen.get(3) is None
    with pytest.raises(ValueError, match="at least 1"):
        LastSeen(0)
