"""``opsline products`` and ``opsline orders``: user data printed as is, bad options as usage
errors."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner, Result

from opsline.cli.main import app
from opsline.settings import Settings
from tests.helpers import assert_problem, login
from tests.orders.conftest import Shop, wait_for

# Rich markup, a markup escape and an emoji code: each printed as typed.
NAMES = ["[/]", "[bold]x", "a\\", ":smile: [link=x]y[/link]"]


def test_products_and_orders_print_names_as_typed(cli: CliRunner, shop: Shop) -> None:
    tenant = str(shop.owner.tenant_id)
    for n, name in enumerate(NAMES):
        options = ["--sku", f"S-{n}", "--name", name, "--price", "1.50", "--stock", "3"]
        created = cli.invoke(app, ["products", "create", "--tenant", tenant, *options])
        assert created.exit_code == 0, created.output
    listed = cli.invoke(app, ["products", "list", "--tenant", tenant])
    assert listed.exit_code == 0, listed.output
    for name in NAMES:
        assert name in listed.output
    product = shop.client.get(
        "/api/v1/products", params={"sku": "S-0"}, headers=shop.owner.headers
    ).json()["items"][0]
    order = shop.order([(product["id"], 1)]).json()
    shown = cli.invoke(app, ["orders", "show", "--tenant", tenant, order["id"]])
    assert shown.exit_code == 0, shown.output
    assert "[/]" in shown.output
    orders = cli.invoke(app, ["orders", "list", "--tenant", tenant])
    assert orders.exit_code == 0 and order["id"] in orders.output


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--price", "abc"], "--price"),
        (["--price", "NaN"], "--price"),
        (["--price", "-1"], "--price"),
        (["--price", "1", "--name", "a\x00b"], "--name"),
        (["--price", "1", "--sku", "no spaces"], "--sku"),
        (["--price", "1", "--stock", str(10**10)], "--stock"),
    ],
)
def test_bad_product_options_are_usage_errors(
    cli: CliRunner, shop: Shop, options: list[str], named: str
) -> None:
    base = ["products", "create", "--tenant", str(shop.owner.tenant_id)]
    defaults = {"--sku": "S-1", "--name": "Mug"}
    given = dict(zip(options[::2], options[1::2], strict=True))
    args = base + [item for pair in {**defaults, **given}.items() for item in pair]
    result = cli.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert named in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    listed = shop.client.get("/api/v1/products", headers=shop.owner.headers).json()
    assert listed["items"] == []


def test_stock_adjustments_from_the_command_line_respect_the_maximum(
    cli: CliRunner, shop: Shop
) -> None:
    product = shop.product(stock=10)
    base = ["products", "adjust-stock", product["id"], "--tenant", str(shop.owner.tenant_id)]
    refused = cli.invoke(app, [*base, "--delta", "1000000000", "--reason", "count"])
    assert refused.exit_code == 1
    assert "maximum of 1000000000" in refused.output
    bad_reason = cli.invoke(app, [*base, "--delta", "1", "--reason", "a\x00b"])
    assert bad_reason.exit_code == 2 and "--reason" in bad_reason.output
    zero = cli.invoke(app, [*base, "--delta", "0", "--reason", "count"])
    assert zero.exit_code == 2 and "--delta" in zero.output
    assert shop.stock(product["id"]) == 10


def _invoke(cli: CliRunner, *args: str) -> Result:
    return cli.invoke(app, list(args))


def test_cancel_from_the_command_line_restores_stock_once(cli: CliRunner, shop: Shop) -> None:
    tenant = str(shop.owner.tenant_id)
    product = shop.product(stock=5)
    order = shop.order([(product["id"], 2)]).json()
    assert shop.stock(product["id"]) == 3
    cancelled = _invoke(cli, "orders", "cancel", order["id"], "--tenant", tenant, "--reason", "ops")
    assert cancelled.exit_code == 0, cancelled.output
    assert f"order {order['id']} cancelled" in cancelled.output
    shown = shop.client.get(f"/api/v1/orders/{order['id']}", headers=shop.owner.headers).json()
    assert shown["status"] == "CANCELLED"
    assert shop.stock(product["id"]) == 5
    again = _invoke(cli, "orders", "cancel", order["id"], "--tenant", tenant)
    assert again.exit_code == 0, again.output
    assert "was already cancelled" in again.output
    assert shop.stock(product["id"]) == 5


def test_cancelling_a_paid_order_from_the_command_line_fails_clearly(
    cli: CliRunner, shop: Shop, worker: Any
) -> None:
    product = shop.product(stock=5)
    order = shop.order([(product["id"], 1)]).json()
    path = f"/api/v1/orders/{order['id']}"
    wait_for(lambda: shop.client.get(path, headers=shop.owner.headers).json()["status"] == "PAID")
    refused = _invoke(cli, "orders", "cancel", order["id"], "--tenant", str(shop.owner.tenant_id))
    assert refused.exit_code == 1, refused.output
    assert "error: order is PAID; it cannot go to CANCELLED" in refused.output
    assert refused.exception is None or isinstance(refused.exception, SystemExit)
    assert shop.client.get(path, headers=shop.owner.headers).json()["status"] == "PAID"
    assert shop.stock(product["id"]) == 4


def test_stock_adjusted_from_the_command_line_is_kept_with_its_event(
    cli: CliRunner, shop: Shop
) -> None:
    product = shop.product(sku="ADJ-1", stock=10)
    base = ["products", "adjust-stock", product["id"], "--tenant", str(shop.owner.tenant_id)]
    added = _invoke(cli, *base, "--delta", "5", "--reason", "delivery")
    assert added.exit_code == 0, added.output
    assert "ADJ-1 stock is now 15" in added.output
    removed = _invoke(cli, *base, "--delta", "-3", "--reason", "breakage")
    assert removed.exit_code == 0, removed.output
    assert shop.stock(product["id"]) == 12
    events = shop.client.get(
        "/api/v1/events", params={"type": "orders.stock_adjusted"}, headers=shop.owner.headers
    ).json()["items"]
    adjustments = sorted(
        (e["payload"]["delta"], e["payload"]["stock"], e["payload"]["reason"]) for e in events
    )
    assert adjustments == [(-3, 12, "breakage"), (5, 15, "delivery")]
    assert {e["payload"]["product_id"] for e in events} == {product["id"]}


def test_demo_creates_a_small_catalogue_with_one_last_unit(
    cli: CliRunner, app_client: TestClient, settings: Settings
) -> None:
    for _ in range(2):  # a second run adds nothing
        assert _invoke(cli, "demo").exit_code == 0
    tokens = login(app_client, settings.demo_email, settings.demo_password.get_secret_value())
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    products = app_client.get("/api/v1/products", headers=headers).json()["items"]
    assert 3 <= len(products) <= 10
    assert len({p["sku"] for p in products}) == len(products)
    [last] = [p for p in products if p["stock"] == 1]
    assert all(p["stock"] > 1 for p in products if p is not last)
    # The last unit sells once; the next order for it is a 409 naming it.
    body = {"items": [{"product_id": last["id"], "quantity": 1}]}
    first = app_client.post(
        "/api/v1/orders", json=body, headers={**headers, "Idempotency-Key": "d1"}
    )
    assert first.status_code == 201, first.text
    second = app_client.post(
        "/api/v1/orders", json=body, headers={**headers, "Idempotency-Key": "d2"}
    )
    assert_problem(second, 409)
    assert last["sku"] in second.text
