"""``opsline orders`` and ``opsline products``: the operator's view of a tenant's shop."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Annotated

import typer
from rich.table import Table

from opsline.orders import service
from opsline.orders._state import OrderStatus
from opsline.orders.schemas import ProductIn
from opsline.platform.clitools import cli_runtime, console
from opsline.platform.context import Context, system_principal

orders_app = typer.Typer(help="List, show and cancel orders.", no_args_is_help=True)
products_app = typer.Typer(help="Create and list products; adjust stock.", no_args_is_help=True)
TenantOption = Annotated[uuid.UUID, typer.Option(help="Tenant id.")]


def register(app: typer.Typer) -> None:
    app.add_typer(orders_app, name="orders")
    app.add_typer(products_app, name="products")


def _ctx(runtime: object, tenant: uuid.UUID) -> Context:
    from opsline.platform.runtime import Runtime

    assert isinstance(runtime, Runtime)
    return Context(runtime.db, runtime.settings, system_principal(tenant))


@orders_app.command("list")
def orders_list(
    tenant: TenantOption,
    status: Annotated[OrderStatus | None, typer.Option(help="Only this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 50,
) -> None:
    """The newest orders of a tenant."""
    with cli_runtime() as runtime:
        page = service.list_orders(_ctx(runtime, tenant), cursor=None, limit=limit, status=status)
    table = Table("id", "status", "total", "created by", "created")
    for order in page.items:
        table.add_row(
            str(order.id),
            order.status.value,
            f"{order.total:.2f} {order.currency}",
            order.created_by,
            f"{order.created_at:%Y-%m-%d %H:%M:%S}",
        )
    console.print(table)


@orders_app.command("show")
def orders_show(order_id: uuid.UUID, tenant: TenantOption) -> None:
    """One order with its lines."""
    with cli_runtime() as runtime:
        order = service.get_order(_ctx(runtime, tenant), order_id)
    console.print(
        f"order {order.id}  [bold]{order.status.value}[/]  {order.total:.2f} {order.currency}"
    )
    table = Table("sku", "name", "qty", "unit", "total")
    for line in order.lines:
        table.add_row(
            line.sku,
            line.name,
            str(line.quantity),
            f"{line.unit_price:.2f}",
            f"{line.line_total:.2f}",
        )
    console.print(table)


@orders_app.command("cancel")
def orders_cancel(
    order_id: uuid.UUID,
    tenant: TenantOption,
    reason: Annotated[str | None, typer.Option(help="Why.")] = None,
) -> None:
    """Cancel a pending order; its stock is restored once."""
    with cli_runtime() as runtime:
        order, changed = service.cancel_order(_ctx(runtime, tenant), order_id, reason=reason)
    console.print(f"order {order.id} {'cancelled' if changed else 'was already cancelled'}")


@products_app.command("create")
def products_create(
    tenant: TenantOption,
    sku: Annotated[str, typer.Option()],
    name: Annotated[str, typer.Option()],
    price: Annotated[str, typer.Option(help="Unit price, e.g. 12.50")],
    stock: Annotated[int, typer.Option(min=0)] = 0,
    currency: Annotated[str, typer.Option()] = "EUR",
) -> None:
    """Create a product."""
    data = ProductIn(sku=sku, name=name, price=Decimal(price), stock=stock, currency=currency)
    with cli_runtime() as runtime:
        product = service.create_product(_ctx(runtime, tenant), data)
    console.print(f"product {product.sku} {product.id} created with stock {product.stock}")


@products_app.command("list")
def products_list(
    tenant: TenantOption, limit: Annotated[int, typer.Option(min=1, max=200)] = 50
) -> None:
    """The products of a tenant."""
    with cli_runtime() as runtime:
        page = service.list_products(_ctx(runtime, tenant), cursor=None, limit=limit)
    table = Table("id", "sku", "name", "price", "stock")
    for p in page.items:
        table.add_row(str(p.id), p.sku, p.name, f"{p.price:.2f} {p.currency}", str(p.stock))
    console.print(table)


@products_app.command("adjust-stock")
def products_adjust_stock(
    product_id: uuid.UUID,
    tenant: TenantOption,
    delta: Annotated[int, typer.Option(help="Units to add; negative removes.")],
    reason: Annotated[str, typer.Option(help="Why (kept with the StockAdjusted event).")],
) -> None:
    """Add or remove stock with a reason; never below zero."""
    if delta == 0:
        raise typer.BadParameter("delta must not be zero", param_hint="--delta")
    with cli_runtime() as runtime:
        product = service.adjust_stock(
            _ctx(runtime, tenant), product_id, delta=delta, reason=reason
        )
    console.print(f"{product.sku} stock is now {product.stock}")
