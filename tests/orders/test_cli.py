"""``opsline products`` and ``opsline orders``: user data printed as is, bad options as usage
errors."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from opsline.cli.main import app
from opsline.settings import Settings
from tests.orders.conftest import Shop

# Rich markup, a markup escape and an emoji code: each printed as typed.
NAMES = ["[/]", "[bold]x", "a\\", ":smile: [link=x]y[/link]"]


@pytest.fixture
def cli(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("OPSLINE_VAR_DIR", str(settings.var_dir))
    if settings.database_url:
        monkeypatch.setenv("OPSLINE_DATABASE_URL", settings.database_url)
    assert settings.secret_key is not None
    monkeypatch.setenv("OPSLINE_SECRET_KEY", settings.secret_key.get_secret_value())
    return CliRunner()


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
