"""``opsline orders`` and ``opsline products`` check the tenant before acting: an
unknown one is an error naming it, never a misleading "SKU already used" nor an
empty listing."""

from __future__ import annotations

import uuid

import pytest
from typer.testing import CliRunner

from opsline.cli.main import app
from tests.helpers import signup
from tests.orders.conftest import Shop

NOBODY = "00000000-0000-0000-0000-00000000beef"
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


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_an_unknown_tenant_exits_1_naming_it(
    cli: CliRunner, shop: Shop, command: list[str]
) -> None:
    result = cli.invoke(app, [*command, "--tenant", NOBODY])
    assert result.exit_code == 1, result.output
    assert f"tenant {NOBODY} not found" in result.output
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
