"""``opsline orders`` and ``opsline products`` check the tenant before acting: an
unknown one (by id or by slug) is an error naming it, never a misleading "SKU
already used" nor an empty listing. Their ids print whole in a narrow terminal."""

from __future__ import annotations

import re
import uuid

import pytest
from typer.testing import CliRunner

from opsline.cli.main import app
from opsline.platform.clitools import console
from opsline.platform.runtime import Runtime
from opsline.platform.tenancy import service as tenancy
from tests.helpers import signup
from tests.orders.conftest import Shop

NOBODY = "00000000-0000-0000-0000-00000000beef"
NO_SLUG = "no-such-shop-beef00"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
SOME_ID = str(uuid.UUID(int=1))

# Every command taking --tenant, with otherwise valid arguments.
COMMANDS = [
    ["orders", "list"],
    ["orders", "show", SOME_ID],
    ["orders", "cancel", SOME_ID, "--reason", "wrong size"],
    ["products", "create", "--sku", "S-1", "--name", "Mug", "--price", "1.50"],
    ["products", "list"],
    ["products", "adjust-stock", SOME_ID, "--delta", "1", "--reason", "count"],
]


@pytest.mark.parametrize("unknown", [NOBODY, NO_SLUG])
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_an_unknown_tenant_exits_1_naming_it(
    cli: CliRunner, shop: Shop, command: list[str], unknown: str
) -> None:
    result = cli.invoke(app, [*command, "--tenant", unknown])
    assert result.exit_code == 1, result.output
    assert f"tenant {unknown} not found" in result.output
    assert "SKU" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_known_tenant_still_creates_and_a_taken_sku_is_still_reported(
    cli: CliRunner, shop: Shop
) -> None:
    create = [*COMMANDS[3], "--tenant", str(shop.owner.tenant_id)]
    first = cli.invoke(app, create)
    assert first.exit_code == 0, first.output
    again = cli.invoke(app, create)
    assert again.exit_code == 1
    assert "'S-1' is already used" in again.output


def test_a_product_of_another_tenant_is_not_found_there(cli: CliRunner, shop: Shop) -> None:
    # The tenant exists but holds no such product: the product is what is missing.
    product = shop.product(stock=5)
    other = signup(shop.client, tenant="Other")
    args = ["products", "adjust-stock", product["id"], "--tenant", str(other.tenant_id)]
    result = cli.invoke(app, [*args, "--delta", "1", "--reason", "count"])
    assert result.exit_code == 1
    assert "not found" in result.output and "tenant" not in result.output
    assert shop.stock(product["id"]) == 5


def _slug(runtime: Runtime, shop: Shop) -> str:
    return tenancy.get_tenant(runtime.db, shop.owner.tenant_id).slug


def test_a_tenant_given_by_slug_works_as_by_id(
    cli: CliRunner, shop: Shop, runtime: Runtime
) -> None:
    slug = _slug(runtime, shop)
    created = cli.invoke(app, [*COMMANDS[3], "--tenant", slug])
    assert created.exit_code == 0, created.output
    product_id = re.search(UUID, created.output).group(0)  # type: ignore[union-attr]
    adjust = ["products", "adjust-stock", product_id, "--delta", "2", "--reason", "count"]
    adjusted = cli.invoke(app, [*adjust, "--tenant", slug])
    assert adjusted.exit_code == 0 and "stock is now 2" in adjusted.output
    order = shop.order([(product_id, 1)]).json()
    show = ["orders", "show", order["id"]]
    for command, shown in ((["products", "list"], product_id), (["orders", "list"], order["id"])):
        by_slug = cli.invoke(app, [*command, "--tenant", slug])
        by_id = cli.invoke(app, [*command, "--tenant", str(shop.owner.tenant_id)])
        assert by_slug.exit_code == 0, by_slug.output
        assert by_slug.output == by_id.output
        assert shown in by_slug.output
    shown_order = cli.invoke(app, [*show, "--tenant", slug])
    assert shown_order.exit_code == 0 and f"order {order['id']}" in shown_order.output
    cancelled = cli.invoke(app, ["orders", "cancel", order["id"], "--tenant", slug])
    assert cancelled.exit_code == 0, cancelled.output


def test_ids_print_whole_in_an_80_column_terminal(
    cli: CliRunner, shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    product = shop.product(sku="SKU-WITH-A-LONG-CODE", stock=5)
    order = shop.order([(product["id"], 1)]).json()
    monkeypatch.setattr(console, "width", 80)  # Rich reads COLUMNS once, at import
    tenant = ["--tenant", str(shop.owner.tenant_id)]
    for command, wanted in ((["products", "list"], product), (["orders", "list"], order)):
        listed = cli.invoke(app, [*command, *tenant])
        assert listed.exit_code == 0, listed.output
        assert f"│ {wanted['id']} │" in listed.output, listed.output
        assert "…" not in listed.output
        assert max(len(line) for line in listed.output.splitlines()) <= 80
