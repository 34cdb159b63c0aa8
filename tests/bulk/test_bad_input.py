"""Bad input is a 4xx problem with a message, never a 500."""

from __future__ import annotations

from typing import Any

import pytest

from tests.bulk.conftest import Desk
from tests.helpers import assert_problem

BASE: dict[str, Any] = {
    "resource": "products",
    "action": "update",
    "params": {"set": {"name": "x"}},
}


def _where(field: str, op: str, value: Any) -> dict[str, Any]:
    return {**BASE, "where": [{"field": field, "op": op, "value": value}]}


BAD_PREVIEWS = [
    _where("stock", "lt", 10**30),
    _where("stock", "eq", "99999999999999999999"),
    _where("stock", "eq", "abc"),
    _where("stock", "eq", 1.5),
    _where("price", "between", ["1"]),
    _where("price", "between", ["a", "b"]),
    _where("price", "between", "x"),
    _where("price", "in", [[1]]),
    _where("price", "in", list(range(1001))),
    _where("price", "in", []),
    _where("price", "eq", "NaN"),
    _where("id", "eq", {"a": 1}),
    _where("created_at", "gt", "2020-01-01T00:00:00"),
    _where("created_at", "gt", "2020-13-01T00:00:00Z"),
    _where("created_at", "gt", 5),
    _where("price", "contains", "1"),
    _where("name", "contains", 5),
    _where("name", "eq", None),
    {**BASE, "where": [{"op": "eq", "value": 1}]},
    {**BASE, "params": {"set": [1]}},
    {**BASE, "params": {}},
    {**BASE, "params": {"set": {"name": "x"}, "other": 1}},
    {**BASE, "params": {"adjust": {"price": "+1e5%"}}},
    {**BASE, "params": {"adjust": {"name": "+1"}}},
    {**BASE, "params": {"adjust": {"price": ["+1"]}}},
    {**BASE, "params": {"set": {"price": "NaN"}}},
    {**BASE, "params": {"set": {"price": "1e400"}}},
    {**BASE, "params": {"set": {"price": 1e308}}},
    {**BASE, "params": {"set": {"price": "0.001"}}},
    {**BASE, "params": {"set": {"name": 10**30}}},
    {**BASE, "params": {"set": {"name": "x" * 201}}},
    {**BASE, "params": {"set": {"price": "1", "x": 1}}},
    {**BASE, "params": {"set": {"price": "1"}, "adjust": {"price": "+1"}}},
    {**BASE, "ids": ["nope"]},
    {**BASE, "batch_size": 0},
    {**BASE, "undo_days": 0},
    {**BASE, "undo_days": 91},
    {**BASE, "resource": None},
    [],
    "x",
    _where("stock", "lt", 2**40),  # beyond the INTEGER column
    _where("stock", "in", [1, 2**31]),
    _where("stock", "between", [-(2**31) - 1, 0]),
    _where("name", "eq", "a\x00b"),
    _where("name", "starts_with", "\x00"),
    _where("name", "in", ["ok", "\x00"]),
    {**BASE, "params": {"set": {"name": "a\x00b"}}},
    {**BASE, "params": {"set": {"name": "two\nlines"}}},  # as the products API refuses
    _where("name", "contains", "bell\x07"),
    _where("sku", "eq", "tab\t"),
    {**BASE, "action": "archive", "params": {"set": {"name": "x"}}},
    {**BASE, "action": "export", "params": {"format": "csv"}},
]


@pytest.mark.parametrize("body", BAD_PREVIEWS)
def test_bad_preview_is_422(desk: Desk, body: Any) -> None:
    for path in ("/preview", "/runs"):
        got = desk.post(path, body)
        assert 400 <= got.status_code < 500, (path, got.status_code, got.text)
        assert_problem(got, got.status_code)


def test_malformed_confirmation_tokens_are_409(desk: Desk) -> None:
    body = {"resource": "products", "action": "soft_delete", "ids": desk.seed(2)}
    for token in ("1.\u00e9", "x", "99999999999999999999999999.abc", ".", "1."):
        got = desk.post("/runs", {**body, "confirmation_token": token})
        assert_problem(got, 409)


def test_bad_schedule_times_and_zones_are_422(desk: Desk) -> None:
    body = {"resource": "products", "action": "archive", "ids": desk.seed(1)}
    for run_at in ("9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+05:00", "nope"):
        assert_problem(desk.post("/schedules", {**body, "run_at": run_at}), 422)
    for tz in ("Europe", "", "/etc/passwd", "Europe/../UTC"):
        at = {"run_at": "2099-01-01T00:00:00", "timezone": tz}
        assert_problem(desk.post("/schedules", {**body, **at}), 422)


def test_bad_list_and_run_queries_are_4xx(desk: Desk) -> None:
    filters = ("status=bogus", "kind=x", "action=%00", "resource=a%00b", "action=")
    for query in ("cursor=abc", "cursor=WzEsMl0", "limit=0", *filters):
        assert_problem(desk.get(f"/runs?{query}"), 422)
    for query in filters:
        assert_problem(desk.get(f"/audit/export?{query}"), 422)
    nobody = "00000000-0000-0000-0000-000000000000"
    assert_problem(desk.get(f"/runs/{nobody}/export?format=doc"), 422)
    assert_problem(desk.post(f"/runs/{nobody}/undo", {"force": [1]}), 422)
    assert_problem(desk.post("/runs/nope/undo", {}), 422)
    assert_problem(desk.post(f"/runs/{nobody}/undo", {}), 404)


@pytest.mark.parametrize(
    "condition",
    [
        ("created_at", "gt", "0001-01-01T00:00:00+05:00"),
        ("created_at", "gt", "9999-12-31T23:59:59-05:00"),
        ("stock", "lt", 2**63),
    ],
)
def test_out_of_range_filter_values_are_422(desk: Desk, condition: tuple[str, str, Any]) -> None:
    assert_problem(desk.post("/preview", _where(*condition)), 422)


@pytest.mark.parametrize("huge", ["1e400", "1e200000", "9" * 140_000])
def test_extreme_decimal_filters_are_answered(desk: Desk, huge: str) -> None:
    """Beyond what PostgreSQL's numeric parses (1e200000 was a 500 there)."""
    desk.seed(2)
    assert desk.post("/preview", _where("price", "lt", huge)).json()["count"] == 2
    assert desk.post("/preview", _where("price", "gt", "-" + huge)).json()["count"] == 2
    assert desk.post("/preview", _where("price", "gt", huge)).json()["count"] == 0
    assert desk.post("/preview", _where("price", "eq", huge)).json()["count"] == 0
    both = _where("price", "between", ["-" + huge, huge])
    assert desk.post("/preview", both).json()["count"] == 2
