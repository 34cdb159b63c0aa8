"""Bad input to products and orders is a 4xx problem naming what to fix, never a 500,
and SQLite and PostgreSQL answer it alike."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest

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
