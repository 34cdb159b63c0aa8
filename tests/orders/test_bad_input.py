"""Bad input to products and orders is a 4xx problem naming what to fix, never a 500,
and SQLite and PostgreSQL answer it alike."""

from __future__ import annotations

import base64
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.exc import DBAPIError

from opsline.orders.models import MAX_MONEY, STOCK_CEILING, products_table
from opsline.orders.schemas import MAX_STOCK
from opsline.platform.runtime import Runtime
from tests.helpers import assert_problem
from tests.orders.conftest import Shop


def _cursor(values: list[Any]) -> str:
    raw = json.dumps(values, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _locs(body: dict[str, Any]) -> list[list[Any]]:
    return [error["loc"] for error in body["errors"]]


# -- times -------------------------------------------------------------------------------


def test_a_time_without_an_offset_is_422_naming_the_parameter(shop: Shop) -> None:
    for name in ("created_from", "created_to"):
        response = shop.client.get(
            "/api/v1/orders", params={name: "2024-01-01T00:00:00"}, headers=shop.manager.headers
        )
        body = assert_problem(response, 422)
        assert _locs(body) == [["query", name]]
        assert "timezone" in body["errors"][0]["msg"]


@pytest.mark.parametrize("moment", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"])
def test_a_time_beyond_utc_s_calendar_is_422(shop: Shop, moment: str) -> None:
    response = shop.client.get(
        "/api/v1/orders", params={"created_from": moment}, headers=shop.manager.headers
    )
    body = assert_problem(response, 422)
    assert _locs(body) == [["query", "created_from"]]
    assert "out of range" in body["errors"][0]["msg"]


def test_times_in_any_offset_filter_as_the_same_instant(shop: Shop) -> None:
    product = shop.product(stock=5)
    order = shop.order([(product["id"], 1)]).json()
    listed = shop.client.get(
        "/api/v1/orders",
        params={"created_from": "2000-01-01T09:00:00+09:00", "created_to": "9999-12-31T00:00:00Z"},
        headers=shop.manager.headers,
    ).json()
    assert [o["id"] for o in listed["items"]] == [order["id"]]


@pytest.mark.parametrize(
    ("created_from", "created_to"),
    [
        ("2024-02-01T00:00:00Z", "2024-01-01T00:00:00Z"),
        ("2024-01-01T01:00:00+01:00", "2024-01-01T00:00:00Z"),
    ],
)
def test_a_window_that_ends_before_it_starts_is_422_naming_both(
    shop: Shop, created_from: str, created_to: str
) -> None:
    response = shop.client.get(
        "/api/v1/orders",
        params={"created_from": created_from, "created_to": created_to},
        headers=shop.manager.headers,
    )
    body = assert_problem(response, 422)
    assert "created_from" in body["detail"] and "created_to" in body["detail"]
    assert _locs(body) == [["query", "created_from"], ["query", "created_to"]]


@pytest.mark.parametrize(
    "values",
    [
        ["2024-01-01T00:00:00", str(uuid.uuid4())],  # naive
        ["9999-12-31T23:59:59-14:00", str(uuid.uuid4())],  # beyond UTC's calendar
        [1704067200, str(uuid.uuid4())],  # a number where a time belongs
        ["2024-01-01T00:00:00+00:00", 5],  # a number where a UUID belongs
    ],
)
@pytest.mark.parametrize("path", ["/api/v1/orders", "/api/v1/products"])
def test_a_cursor_that_was_not_made_here_is_422(shop: Shop, path: str, values: list[Any]) -> None:
    response = shop.client.get(
        path, params={"cursor": _cursor(values)}, headers=shop.manager.headers
    )
    body = assert_problem(response, 422)
    assert "cursor" in body["detail"]
    assert _locs(body) == [["query", "cursor"]]


def test_the_next_cursor_still_pages_on(shop: Shop) -> None:
    for n in range(3):
        shop.product(f"P-{n}")
    first = shop.client.get("/api/v1/products?limit=2", headers=shop.manager.headers).json()
    second = shop.client.get(
        "/api/v1/products",
        params={"limit": 2, "cursor": first["next_cursor"]},
        headers=shop.manager.headers,
    ).json()
    skus = [p["sku"] for p in first["items"] + second["items"]]
    assert sorted(skus) == ["P-0", "P-1", "P-2"] and second["next_cursor"] is None


# -- text --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["a\x00b", "\x00", "line\nbreak", "bell\x07"])
def test_control_characters_in_a_product_name_are_422(shop: Shop, text: str) -> None:
    created = shop.client.post(
        "/api/v1/products",
        json={"sku": "S-1", "name": text, "price": "1.00"},
        headers=shop.manager.headers,
    )
    body = assert_problem(created, 422)
    assert _locs(body) == [["body", "name"]]
    assert "control characters" in body["errors"][0]["msg"]
    product = shop.product()
    patched = shop.client.patch(
        f"/api/v1/products/{product['id']}", json={"name": text}, headers=shop.manager.headers
    )
    assert _locs(assert_problem(patched, 422)) == [["body", "name"]]
    listed = shop.client.get("/api/v1/products", headers=shop.manager.headers).json()
    assert [p["name"] for p in listed["items"]] == [product["name"]]


def test_nul_in_a_cancel_reason_is_422_and_the_order_stays_pending(shop: Shop) -> None:
    product = shop.product(stock=5)
    order = shop.order([(product["id"], 1)]).json()
    url = f"/api/v1/orders/{order['id']}/cancel"
    refused = shop.client.post(url, json={"reason": "a\x00b"}, headers=shop.member.headers)
    body = assert_problem(refused, 422)
    assert _locs(body) == [["body", "reason"]]
    assert "U+0000" in body["errors"][0]["msg"]
    assert shop.stock(product["id"]) == 4
    # Free text keeps its tabs and line breaks.
    cancelled = shop.client.post(
        url, json={"reason": "wrong size\n\tand colour"}, headers=shop.member.headers
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["failure_reason"] == "wrong size\n\tand colour"


def test_nul_in_a_stock_adjustment_reason_is_422(shop: Shop) -> None:
    product = shop.product(stock=5)
    response = shop.client.post(
        f"/api/v1/products/{product['id']}/stock-adjustments",
        json={"delta": 1, "reason": "a\x00b"},
        headers=shop.manager.headers,
    )
    assert _locs(assert_problem(response, 422)) == [["body", "reason"]]
    assert shop.stock(product["id"]) == 5


@pytest.mark.parametrize(
    ("path", "name"), [("/api/v1/orders", "created_by"), ("/api/v1/products", "sku")]
)
def test_nul_in_a_list_filter_is_422(shop: Shop, path: str, name: str) -> None:
    response = shop.client.get(f"{path}?{name}=a%00b", headers=shop.manager.headers)
    body = assert_problem(response, 422)
    assert _locs(body) == [["query", name]]
    assert "control characters" in body["errors"][0]["msg"]


# -- stock -------------------------------------------------------------------------------


def _adjust(shop: Shop, product_id: str, delta: int) -> Any:
    return shop.client.post(
        f"/api/v1/products/{product_id}/stock-adjustments",
        json={"delta": delta, "reason": "count"},
        headers=shop.manager.headers,
    )


def test_stock_adjustments_stop_at_the_maximum_with_a_409_saying_it(shop: Shop) -> None:
    product = shop.product(stock=0)
    assert _adjust(shop, product["id"], MAX_STOCK).json()["stock"] == MAX_STOCK
    for delta in (1, MAX_STOCK):
        body = assert_problem(_adjust(shop, product["id"], delta), 409)
        assert body["type"].endswith("/stock-maximum")
        assert (body["stock"], body["maximum"]) == (MAX_STOCK, MAX_STOCK)
        assert str(MAX_STOCK) in body["detail"]
    assert shop.stock(product["id"]) == MAX_STOCK
    assert _adjust(shop, product["id"], -1).json()["stock"] == MAX_STOCK - 1


def test_repeated_large_adjustments_never_pass_the_maximum(shop: Shop) -> None:
    # The original report: 1e9 three times reached 3e9 (PostgreSQL: integer out of range).
    product = shop.product(stock=0)
    answers = [_adjust(shop, product["id"], 10**9).status_code for _ in range(3)]
    assert answers == [200, 409, 409]
    assert shop.stock(product["id"]) == 10**9


def test_concurrent_adjustments_cannot_pass_the_maximum_together(shop: Shop) -> None:
    product = shop.product(stock=0)
    step = MAX_STOCK // 4 + 1  # three fit, the fourth would pass the maximum
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: _adjust(shop, product["id"], step), range(6)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200, 200, 200, 409, 409, 409], [a.text for a in answers]
    assert shop.stock(product["id"]) == 3 * step


def test_a_product_cannot_start_above_the_maximum(shop: Shop) -> None:
    response = shop.client.post(
        "/api/v1/products",
        json={"sku": "BIG", "name": "big", "price": "1.00", "stock": MAX_STOCK + 1},
        headers=shop.manager.headers,
    )
    assert _locs(assert_problem(response, 422)) == [["body", "stock"]]


def test_an_order_given_back_may_carry_stock_above_the_maximum(shop: Shop) -> None:
    # Units return to stock even when it was refilled meanwhile: stock is then
    # above the maximum (within the column), and only removals are accepted.
    product = shop.product(stock=MAX_STOCK)
    order = shop.order([(product["id"], 10)]).json()
    assert _adjust(shop, product["id"], 10).json()["stock"] == MAX_STOCK
    cancelled = shop.client.post(
        f"/api/v1/orders/{order['id']}/cancel", headers=shop.member.headers
    )
    assert cancelled.status_code == 200, cancelled.text
    assert shop.stock(product["id"]) == MAX_STOCK + 10
    assert_problem(_adjust(shop, product["id"], 1), 409)
    assert _adjust(shop, product["id"], -5).json()["stock"] == MAX_STOCK + 5


@pytest.mark.parametrize("stock", [STOCK_CEILING + 1, -1])
def test_the_database_refuses_stock_outside_an_integer(
    shop: Shop, runtime: Runtime, stock: int
) -> None:
    product = shop.product(stock=1)
    statement = (
        update(products_table)
        .where(products_table.c.id == uuid.UUID(product["id"]))
        .values(stock=stock)
    )
    with pytest.raises(DBAPIError), runtime.db.unit_of_work() as uow:
        uow.session.execute(statement)
    assert shop.stock(product["id"]) == 1


def test_a_cancel_that_would_take_stock_past_the_column_is_409_until_stock_comes_down(
    shop: Shop, runtime: Runtime
) -> None:
    """Stock at the column's limit (given back while refilled): the cancel is refused
    whole, saying what to do, not a 500; once stock is brought down it goes through."""
    product = shop.product(stock=20)
    order = shop.order([(product["id"], 10)]).json()
    with runtime.db.unit_of_work() as uow:
        uow.session.execute(
            update(products_table)
            .where(products_table.c.id == uuid.UUID(product["id"]))
            .values(stock=STOCK_CEILING - 5)
        )
    url = f"/api/v1/orders/{order['id']}"
    body = assert_problem(shop.client.post(f"{url}/cancel", headers=shop.member.headers), 409)
    assert product["sku"] in body["detail"] and "adjust its stock down" in body["detail"]
    assert shop.client.get(url, headers=shop.member.headers).json()["status"] == "PENDING"
    assert shop.stock(product["id"]) == STOCK_CEILING - 5
    assert _adjust(shop, product["id"], -100).status_code == 200
    cancelled = shop.client.post(f"{url}/cancel", headers=shop.member.headers)
    assert cancelled.json()["status"] == "CANCELLED"
    assert shop.stock(product["id"]) == STOCK_CEILING - 5 - 100 + 10


# -- money -------------------------------------------------------------------------------


def test_an_order_total_beyond_the_money_columns_is_422_and_takes_nothing(shop: Shop) -> None:
    product = shop.product("DEAR", stock=5, price=str(MAX_MONEY))
    body = assert_problem(shop.order([(product["id"], 2)], key="dear"), 422)
    assert body["type"].endswith("/invalid-order")
    assert str(MAX_MONEY) in body["detail"] and "DEAR" in body["detail"]
    assert body["total"] == "1999999999999.98"
    assert shop.stock(product["id"]) == 5
    # Refused, and remembered so under its key; one unit fits.
    again = shop.order([(product["id"], 2)], key="dear")
    assert assert_problem(again, 422)["detail"] == body["detail"]
    assert shop.order([(product["id"], 1)]).status_code == 201
    assert shop.stock(product["id"]) == 4


def test_lines_that_fit_alone_but_not_together_are_422(shop: Shop) -> None:
    half = "500000000000.00"  # one fits, two pass the maximum
    a = shop.product("A", stock=5, price=half)
    b = shop.product("B", stock=5, price=half)
    body = assert_problem(shop.order([(a["id"], 1), (b["id"], 1)]), 422)
    assert "total" in body["detail"] and "lines on their own" not in body["detail"]
    assert shop.stock(a["id"]) == shop.stock(b["id"]) == 5


# -- amounts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("0E-1000000", "0.00"),
        ("0E+1000000", "0.00"),
        ("-0E-1000000", "0.00"),
        ("1E+2", "100.00"),
        ("1250E-2", "12.50"),
    ],
)
def test_a_price_written_with_an_exponent_is_kept_with_two_places(
    shop: Shop, written: str, stored: str
) -> None:
    """Valid amounts, though PostgreSQL refuses "0E-1000000" as written (a 500 before)."""
    created = shop.client.post(
        "/api/v1/products",
        json={"sku": "EXP-1", "name": "Exponent", "price": written, "stock": 1},
        headers=shop.manager.headers,
    )
    assert created.status_code == 201, created.text
    assert created.json()["price"] == stored
    product_id = created.json()["id"]
    patched = shop.client.patch(
        f"/api/v1/products/{product_id}", json={"price": written}, headers=shop.manager.headers
    )
    assert (patched.status_code, patched.json()["price"]) == (200, stored)
    read = shop.client.get(f"/api/v1/products/{product_id}", headers=shop.manager.headers)
    assert read.json()["price"] == stored


@pytest.mark.parametrize("written", ["1E-3", "-1E-2", "1E+12", "NaN", "Infinity"])
def test_a_price_out_of_bounds_with_an_exponent_is_422(shop: Shop, written: str) -> None:
    response = shop.client.post(
        "/api/v1/products",
        json={"sku": "EXP-2", "name": "Exponent", "price": written, "stock": 1},
        headers=shop.manager.headers,
    )
    body = assert_problem(response, 422)
    assert ["body", "price"] in _locs(body)
