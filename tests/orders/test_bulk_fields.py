"""A bulk update of products refuses what the products API refuses: a ``set`` value
the product schema would not accept is a 422 naming the field, for a preview and
for a run alike, and nothing changes."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from opsline.orders.schemas import ProductPatch
from tests.helpers import assert_problem
from tests.orders.conftest import Shop


def _update(product_id: str, **values: Any) -> dict[str, Any]:
    return {
        "resource": "products",
        "action": "update",
        "ids": [product_id],
        "params": {"set": values},
    }


def _api_accepts(**values: Any) -> bool:
    try:
        ProductPatch.model_validate(values)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("currency", "eu"),
        ("currency", "eur"),
        ("currency", "E1R"),
        ("currency", ""),
        ("name", ""),
        ("name", "Mug\u202egnp.exe"),
        ("name", "Mug\x9b31m"),
    ],
)
@pytest.mark.parametrize("path", ["/preview", "/runs", "/schedules"])
def test_a_value_the_product_schema_refuses_is_422_naming_the_field(
    shop: Shop, path: str, field: str, value: str
) -> None:
    product = shop.product(currency="EUR")
    body = _update(product["id"], **{field: value})
    if path == "/schedules":
        body["run_at"] = "2999-01-01T00:00:00Z"
    response = shop.client.post(f"/api/v1/bulk{path}", json=body, headers=shop.owner.headers)
    problem = assert_problem(response, 422)
    assert [error["loc"] for error in problem["errors"]] == [["body", "params", "set", field]]
    assert field in problem["detail"]
    after = shop.client.get(f"/api/v1/products/{product['id']}", headers=shop.owner.headers)
    assert after.json()[field] == product[field]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("currency", "USD"),
        ("currency", "eu"),
        ("currency", "EURO"),
        ("currency", "ÉUR"),
        ("currency", "EU"),
        ("name", "x"),
        ("name", ""),
        ("name", "x" * 200),
        ("name", "x" * 201),
        ("name", "Crème 東京 🎉"),
        ("name", "a\u2029b"),
    ],
)
def test_a_bulk_set_accepts_exactly_what_the_product_api_accepts(
    shop: Shop, field: str, value: str
) -> None:
    product = shop.product()
    preview = shop.client.post(
        "/api/v1/bulk/preview",
        json=_update(product["id"], **{field: value}),
        headers=shop.owner.headers,
    )
    assert preview.status_code == (200 if _api_accepts(**{field: value}) else 422), preview.text
