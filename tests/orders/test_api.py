"""Products and orders over HTTP: creation, stock, idempotency, cancel, visibility."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, update
from sqlalchemy.engine import Engine

from opsline.orders.models import products_table
from opsline.platform.runtime import Runtime
from tests.helpers import assert_problem, login, signup
from tests.orders.conftest import Shop, wait_for


def test_product_crud_with_permissions(shop: Shop) -> None:
    product = shop.product("MUG-1", stock=3, price="12.5")
    assert product["price"] == "12.50"
    assert product["currency"] == "EUR"
    denied = shop.client.post(
        "/api/v1/products",
        json={"sku": "X", "name": "x", "price": "1", "stock": 1},
        headers=shop.member.headers,
    )
    assert_problem(denied, 403)
    patched = shop.client.patch(
        f"/api/v1/products/{product['id']}", json={"price": "13.00"}, headers=shop.manager.headers
    )
    assert patched.json()["price"] == "13.00"
    listed = shop.client.get("/api/v1/products", headers=shop.viewer.headers).json()
    assert [p["sku"] for p in listed["items"]] == ["MUG-1"]


def test_stock_is_not_a_free_patch(shop: Shop) -> None:
    product = shop.product()
    response = shop.client.patch(
        f"/api/v1/products/{product['id']}", json={"stock": 99}, headers=shop.manager.headers
    )
    assert_problem(response, 422)


def test_duplicate_sku_is_409(shop: Shop) -> None:
    shop.product("DUP")
    response = shop.client.post(
        "/api/v1/products",
        json={"sku": "DUP", "name": "again", "price": "1.00", "stock": 1},
        headers=shop.manager.headers,
    )
    assert_problem(response, 409)


def test_negative_price_or_stock_is_422(shop: Shop) -> None:
    for bad in ({"price": "-1"}, {"stock": -1}, {"price": "1.001"}, {"currency": "euro"}):
        body = {"sku": "S", "name": "n", "price": "1.00", "stock": 1, **bad}
        response = shop.client.post("/api/v1/products", json=body, headers=shop.manager.headers)
        assert_problem(response, 422)


def test_stock_adjustment_with_reason_and_event(shop: Shop, runtime: Runtime) -> None:
    product = shop.product(stock=5)
    url = f"/api/v1/products/{product['id']}/stock-adjustments"
    added = shop.client.post(
        url, json={"delta": 7, "reason": "delivery"}, headers=shop.manager.headers
    )
    assert added.json()["stock"] == 12
    too_much = shop.client.post(
        url, json={"delta": -13, "reason": "count"}, headers=shop.manager.headers
    )
    assert_problem(too_much, 409)
    assert shop.stock(product["id"]) == 12
    zero = shop.client.post(url, json={"delta": 0, "reason": "x"}, headers=shop.manager.headers)
    assert_problem(zero, 422)
    from sqlalchemy import select

    from opsline.platform.engine.models import EventRecord

    with runtime.db.read() as session:
        events = session.scalars(
            select(EventRecord).where(EventRecord.type == "orders.stock_adjusted")
        ).all()
    assert [e.payload["delta"] for e in events] == [7]
    assert events[0].payload["reason"] == "delivery"


def test_order_takes_stock_and_computes_totals_on_the_server(shop: Shop) -> None:
    a = shop.product("A", stock=10, price="2.50")
    b = shop.product("B", stock=10, price="0.10")
    response = shop.order([(a["id"], 2), (b["id"], 3), (a["id"], 1)])
    assert response.status_code == 201, response.text
    order = response.json()
    assert order["status"] == "PENDING"
    assert order["total"] == "7.80"
    lines = {line["sku"]: line for line in order["lines"]}
    assert lines["A"]["quantity"] == 3  # duplicate lines are merged
    assert lines["A"]["line_total"] == "7.50"
    assert shop.stock(a["id"]) == 7
    assert shop.stock(b["id"]) == 7


def test_client_totals_are_refused(shop: Shop) -> None:
    product = shop.product()
    response = shop.client.post(
        "/api/v1/orders",
        json={"items": [{"product_id": product["id"], "quantity": 1}], "total": "0.01"},
        headers={**shop.member.headers, "Idempotency-Key": "x"},
    )
    assert_problem(response, 422)


def test_insufficient_stock_names_each_short_product_and_takes_nothing(shop: Shop) -> None:
    a = shop.product("A", stock=1)
    b = shop.product("B", stock=5)
    c = shop.product("C", stock=0)
    response = shop.order([(a["id"], 2), (b["id"], 5), (c["id"], 1)])
    body = assert_problem(response, 409)
    short = {s["sku"]: s for s in body["short"]}
    assert set(short) == {"A", "C"}
    assert short["A"]["available"] == 1
    assert short["A"]["requested"] == 2
    assert [shop.stock(p["id"]) for p in (a, b, c)] == [1, 5, 0]


def test_unknown_or_foreign_product_is_422(shop: Shop) -> None:
    other = signup(shop.client)
    foreign = shop.client.post(
        "/api/v1/products",
        json={"sku": "F", "name": "f", "price": "1.00", "stock": 5},
        headers=other.headers,
    ).json()
    for product_id in (foreign["id"], str(uuid.uuid4())):
        body = assert_problem(shop.order([(product_id, 1)]), 422)
        assert body["unknown_products"] == [product_id]


def test_bad_quantities_are_422(shop: Shop) -> None:
    product = shop.product()
    for quantity in (0, -1, 10_001):
        assert_problem(shop.order([(product["id"], quantity)]), 422)
    assert_problem(shop.order([]), 422)


def test_idempotency_key_is_required(shop: Shop) -> None:
    product = shop.product()
    response = shop.client.post(
        "/api/v1/orders",
        json={"items": [{"product_id": product["id"], "quantity": 1}]},
        headers=shop.member.headers,
    )
    body = assert_problem(response, 400)
    assert "Idempotency-Key" in body["detail"]
    too_long = shop.order([(product["id"], 1)], key="k" * 256)
    assert too_long.status_code in (400, 422)


def test_same_key_same_body_replays_the_first_response(shop: Shop) -> None:
    product = shop.product(stock=5)
    first = shop.order([(product["id"], 2)], key="same")
    again = shop.order([(product["id"], 2)], key="same")
    assert again.status_code == first.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert shop.stock(product["id"]) == 3


def test_same_key_different_body_is_422(shop: Shop) -> None:
    product = shop.product(stock=5)
    shop.order([(product["id"], 1)], key="k1")
    response = shop.order([(product["id"], 2)], key="k1")
    assert_problem(response, 422)
    assert shop.stock(product["id"]) == 4


def test_a_key_past_its_24_hours_is_free_for_a_new_order(shop: Shop, runtime: Runtime) -> None:
    from opsline.db import utcnow
    from opsline.platform.idempotency.models import IdempotencyKey

    product = shop.product(stock=5)
    first = shop.order([(product["id"], 1)], key="day-old")
    assert first.status_code == 201
    with runtime.db.unit_of_work() as uow:
        uow.session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.key == "day-old")
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    # Not yet purged, but expired: neither a replay nor a 422 for another body.
    again = shop.order([(product["id"], 2)], key="day-old")
    assert again.status_code == 201, again.text
    assert "idempotent-replayed" not in again.headers
    assert again.json()["id"] != first.json()["id"]
    assert shop.stock(product["id"]) == 2
    # The key is claimed afresh: the new order is what it replays now.
    replayed = shop.order([(product["id"], 2)], key="day-old")
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.json()["id"] == again.json()["id"]


def test_a_refused_order_is_replayed_as_refused(shop: Shop) -> None:
    product = shop.product(stock=1)
    first = shop.order([(product["id"], 2)], key="k-short")
    assert_problem(first, 409)
    shop.client.post(
        f"/api/v1/products/{product['id']}/stock-adjustments",
        json={"delta": 5, "reason": "restock"},
        headers=shop.manager.headers,
    )
    again = shop.order([(product["id"], 2)], key="k-short")
    assert_problem(again, 409)
    assert again.headers["idempotent-replayed"] == "true"


def _lock_row(runtime: Runtime, product_id: str) -> Any:
    holder = runtime.db.engine.connect()
    holder.begin()
    holder.execute(
        update(products_table)
        .where(products_table.c.id == uuid.UUID(product_id))
        .values(stock=products_table.c.stock)
    )
    return holder


def test_an_order_waits_for_a_busy_product_row_as_long_as_it_takes(
    shop: Shop, runtime: Runtime
) -> None:
    # The stock decrement waits its turn on a row another transaction holds.
    product = shop.product(stock=5)
    holder = _lock_row(runtime, product["id"])
    with ThreadPoolExecutor(1) as pool:
        placing = pool.submit(shop.order, [(product["id"], 1)])
        time.sleep(0.75)
        assert not placing.done()
        holder.commit()
        holder.close()
        response = placing.result(timeout=30)
    assert response.status_code == 201, response.text
    assert shop.stock(product["id"]) == 4


def test_the_same_key_while_the_first_request_is_open_is_409_at_once(
    shop: Shop, runtime: Runtime
) -> None:
    if runtime.db.is_sqlite:
        pytest.skip("SQLite runs one writer at a time: the second request replays the first")
    product = shop.product(stock=5)
    holder = _lock_row(runtime, product["id"])  # the first request stops after its key
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(shop.order, [(product["id"], 1)], key="open")
        time.sleep(0.5)
        assert not first.done()
        second = shop.order([(product["id"], 1)], key="open")
        still_open = not first.done()  # answered without waiting for the first to end
        holder.commit()
        holder.close()
        assert first.result(timeout=30).status_code == 201
    body = assert_problem(second, 409)
    assert "in progress" in body["detail"]
    assert still_open
    replay = shop.order([(product["id"], 1)], key="open")
    assert replay.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert shop.stock(product["id"]) == 4


def test_an_order_on_postgresql_is_one_read_and_one_statement(shop: Shop, runtime: Runtime) -> None:
    if runtime.db.is_sqlite:
        pytest.skip("SQLite runs held-back writes at once, in its one writer's transaction")
    product = shop.product(stock=5)
    sent: list[tuple[int, str, bool]] = []

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        autocommit = bool(conn.connection.dbapi_connection.autocommit)
        sent.append((threading.get_ident(), statement, autocommit))

    event.listen(Engine, "before_cursor_execute", record)
    try:
        response = shop.order([(product["id"], 1)])
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    assert response.status_code == 201, response.text
    [request_thread] = {thread for thread, statement, _ in sent if "FROM products" in statement}
    mine = [(s, auto) for thread, s, auto in sent if thread == request_thread]
    # The products with the token's session (its role a column of the same
    # read), then the order, its lines, status log, payment job, event, key,
    # stock decrement and NOTIFY: one statement, in autocommit (no BEGIN, no COMMIT).
    assert [(s.split()[0], auto) for s, auto in mine] == [("SELECT", True), ("WITH", True)]
    assert "FROM products" in mine[0][0] and "auth_sessions" in mine[0][0]
    assert shop.stock(product["id"]) == 4


def test_keys_are_scoped_to_the_principal(shop: Shop) -> None:
    product = shop.product(stock=5)
    mine = shop.order([(product["id"], 1)], key="shared", who=shop.member)
    theirs = shop.order([(product["id"], 1)], key="shared", who=shop.manager)
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"]


def test_cancel_restores_stock_once(shop: Shop) -> None:
    product = shop.product(stock=5)
    order = shop.order([(product["id"], 3)]).json()
    url = f"/api/v1/orders/{order['id']}/cancel"
    first = shop.client.post(url, json={"reason": "changed my mind"}, headers=shop.member.headers)
    assert first.json()["status"] == "CANCELLED"
    again = shop.client.post(url, headers=shop.member.headers)
    assert again.status_code == 200
    assert again.json()["status"] == "CANCELLED"
    assert shop.stock(product["id"]) == 5


def test_every_answer_about_an_order_carries_its_lines(shop: Shop) -> None:
    """Created, read, listed and cancelled (twice), an order shows the same lines."""
    first, second = shop.product(sku="L-1", stock=5), shop.product(sku="L-2", stock=5)
    created = shop.order([(second["id"], 2), (first["id"], 1)])
    assert created.status_code == 201, created.text
    lines = created.json()["lines"]
    assert sorted((x["sku"], x["quantity"]) for x in lines) == [("L-1", 1), ("L-2", 2)]
    other = shop.order([(first["id"], 1)]).json()
    url = f"/api/v1/orders/{created.json()['id']}"
    assert shop.client.get(url, headers=shop.member.headers).json()["lines"] == lines
    listed = shop.client.get("/api/v1/orders", headers=shop.member.headers).json()["items"]
    by_id = {item["id"]: item["lines"] for item in listed}
    assert by_id[created.json()["id"]] == lines
    assert [x["sku"] for x in by_id[other["id"]]] == ["L-1"]
    cancelled = shop.client.post(f"{url}/cancel", headers=shop.member.headers)
    assert (cancelled.json()["status"], cancelled.json()["lines"]) == ("CANCELLED", lines)
    again = shop.client.post(f"{url}/cancel", headers=shop.member.headers)
    assert (again.status_code, again.json()["lines"]) == (200, lines)


def test_cancel_after_payment_is_409_naming_the_state(shop: Shop, worker: Any) -> None:
    product = shop.product(stock=5)
    order = shop.order([(product["id"], 1)]).json()
    url = f"/api/v1/orders/{order['id']}"
    wait_for(lambda: shop.client.get(url, headers=shop.member.headers).json()["status"] == "PAID")
    response = shop.client.post(f"{url}/cancel", headers=shop.member.headers)
    body = assert_problem(response, 409)
    assert body["current_status"] == "PAID"
    assert shop.stock(product["id"]) == 4


def test_members_see_and_cancel_only_their_own_orders(shop: Shop) -> None:
    product = shop.product(stock=10)
    managers = shop.order([(product["id"], 1)], who=shop.manager).json()
    mine = shop.order([(product["id"], 1)], who=shop.member).json()
    listed = shop.client.get("/api/v1/orders", headers=shop.member.headers).json()
    assert [o["id"] for o in listed["items"]] == [mine["id"]]
    hidden = shop.client.get(f"/api/v1/orders/{managers['id']}", headers=shop.member.headers)
    assert_problem(hidden, 404)
    cancel = shop.client.post(
        f"/api/v1/orders/{managers['id']}/cancel", headers=shop.member.headers
    )
    assert_problem(cancel, 404)
    # Managers see and cancel the tenant's orders.
    everything = shop.client.get("/api/v1/orders", headers=shop.manager.headers).json()
    assert {o["id"] for o in everything["items"]} == {managers["id"], mine["id"]}
    by_manager = shop.client.post(
        f"/api/v1/orders/{mine['id']}/cancel", headers=shop.manager.headers
    )
    assert by_manager.json()["status"] == "CANCELLED"


def _orders_of_tenant(shop: Shop) -> int:
    return len(shop.client.get("/api/v1/orders", headers=shop.manager.headers).json()["items"])


def test_viewer_cannot_order(shop: Shop) -> None:
    product = shop.product()
    assert_problem(shop.order([(product["id"], 1)], who=shop.viewer), 403)
    assert_problem(shop.order([(str(uuid.uuid4()), 1)], who=shop.viewer), 403)
    assert shop.stock(product["id"]) == 10
    assert _orders_of_tenant(shop) == 0


def test_an_ended_session_places_nothing_and_replays_nothing(shop: Shop) -> None:
    """The session is checked by the order's own read of its products (one
    statement): once logged out, 401 before anything is written or replayed."""
    product = shop.product(stock=5)
    assert shop.order([(product["id"], 1)], key="before").status_code == 201
    logout = shop.client.post("/api/v1/auth/logout", headers=shop.member.headers)
    assert logout.status_code == 204
    assert_problem(shop.order([(product["id"], 1)], key="after"), 401)
    assert_problem(shop.order([(product["id"], 1)], key="before"), 401)
    # No product found: the session is checked on its own, still before the 422.
    assert_problem(shop.order([(str(uuid.uuid4()), 1)], key="unknown"), 401)
    assert shop.stock(product["id"]) == 4
    assert _orders_of_tenant(shop) == 1
    # The refused request claimed no key: after logging in again it places the order.
    tokens = login(shop.client, shop.member.email, tenant_id=shop.member.tenant_id)
    again = replace(shop.member, access_token=tokens["access_token"])
    retried = shop.order([(product["id"], 1)], key="after", who=again)
    assert retried.status_code == 201, retried.text
    assert "idempotent-replayed" not in retried.headers
    assert shop.stock(product["id"]) == 3


def test_orders_with_an_api_key(shop: Shop) -> None:
    product = shop.product(stock=5)

    def key_with(role: str) -> dict[str, str]:
        created = shop.client.post(
            "/api/v1/api-keys", json={"name": role, "role": role}, headers=shop.owner.headers
        )
        assert created.status_code == 201, created.text
        return {"X-API-Key": created.json()["key"]}

    body = {"items": [{"product_id": product["id"], "quantity": 2}]}
    placed = shop.client.post(
        "/api/v1/orders", json=body, headers={**key_with("member"), "Idempotency-Key": "a"}
    )
    assert placed.status_code == 201, placed.text
    assert placed.json()["created_by"].startswith("apikey:")
    refused = shop.client.post(
        "/api/v1/orders", json=body, headers={**key_with("viewer"), "Idempotency-Key": "b"}
    )
    assert_problem(refused, 403)
    assert shop.stock(product["id"]) == 3


def test_an_order_counts_once_against_the_rate_limit(shop: Shop) -> None:
    product = shop.product(stock=5)
    first = shop.order([(product["id"], 1)])
    second = shop.order([(product["id"], 1)])
    remaining = [int(r.headers["ratelimit-remaining"]) for r in (first, second)]
    assert remaining[0] - remaining[1] == 1


def test_order_list_filters(shop: Shop) -> None:
    product = shop.product(stock=10)
    kept = shop.order([(product["id"], 1)]).json()
    gone = shop.order([(product["id"], 1)]).json()
    shop.client.post(f"/api/v1/orders/{gone['id']}/cancel", headers=shop.member.headers)
    pending = shop.client.get(
        "/api/v1/orders", params={"status": "PENDING"}, headers=shop.manager.headers
    ).json()
    assert [o["id"] for o in pending["items"]] == [kept["id"]]
    by_creator = shop.client.get(
        "/api/v1/orders",
        params={"created_by": f"user:{shop.member.user_id}", "limit": 1},
        headers=shop.manager.headers,
    ).json()
    assert len(by_creator["items"]) == 1 and by_creator["next_cursor"]
    later = shop.client.get(
        "/api/v1/orders",
        params={"created_from": "2999-01-01T00:00:00Z"},
        headers=shop.manager.headers,
    ).json()
    assert later["items"] == []
    bad = shop.client.get("/api/v1/orders", params={"status": "LOST"}, headers=shop.manager.headers)
    assert_problem(bad, 422)


class TestKeyOptional:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"idempotency_required": False, "payment_latency_max_ms": 1}

    def test_orders_without_a_key_when_not_required(self, shop: Shop) -> None:
        product = shop.product()
        response = shop.client.post(
            "/api/v1/orders",
            json={"items": [{"product_id": product["id"], "quantity": 1}]},
            headers=shop.member.headers,
        )
        assert response.status_code == 201

    def test_a_short_order_without_a_key_is_409_and_leaves_nothing(self, shop: Shop) -> None:
        product = shop.product(stock=1)
        response = shop.client.post(
            "/api/v1/orders",
            json={"items": [{"product_id": product["id"], "quantity": 2}]},
            headers=shop.member.headers,
        )
        body = assert_problem(response, 409)
        assert body["short"][0]["available"] == 1
        assert shop.stock(product["id"]) == 1
        listed = shop.client.get("/api/v1/orders", headers=shop.manager.headers).json()
        assert listed["items"] == []
