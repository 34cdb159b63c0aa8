"""``opsline orders`` and ``opsline products``: the operator's view of a tenant's shop."""

from __future__ import annotations

import uuid
from decimal import Decimal, InvalidOperation
from typing import Annotated, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.markup import escape
from rich.table import Table

from opsline.orders import service
from opsline.orders._state import OrderStatus
from opsline.orders.schemas import CancelIn, ProductIn, StockAdjustmentIn
from opsline.platform.clitools import (
    TenantOption,
    cli_runtime,
    console,
    id_column,
    plain,
    resolve_tenant,
    table,
)
from opsline.platform.context import Context, system_principal
from opsline.platform.runtime import Runtime

orders_app = typer.Typer(help="List, show and cancel orders.", no_args_is_help=True)
products_app = typer.Typer(help="Create and list products; adjust stock.", no_args_is_help=True)
M = TypeVar("M", bound=BaseModel)


def register(app: typer.Typer) -> None:
    app.add_typer(orders_app, name="orders")
    app.add_typer(products_app, name="products")


def _ctx(runtime: Runtime, tenant: str) -> Context:
    """The system acting in ``tenant`` (an id or a slug); an unknown tenant exits 1
    naming it (else a create fails on the foreign key, and a list shows nothing as if
    all were fine)."""
    tenant_id = resolve_tenant(runtime.db, tenant)
    return Context(runtime.db, runtime.settings, system_principal(tenant_id))


@orders_app.command("list")
def orders_list(
    tenant: TenantOption,
    status: Annotated[OrderStatus | None, typer.Option(help="Only this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 50,
) -> None:
    """The newest orders of a tenant."""
    with cli_runtime() as runtime:
        page = service.list_orders(_ctx(runtime, tenant), cursor=None, limit=limit, status=status)
    rows = table(id_column(), "status", "total", "created by", "created")
    for order in page.items:
        rows.add_row(
            str(order.id),
            order.status.value,
            plain(f"{order.total:.2f} {order.currency}"),
            plain(order.created_by),
            f"{order.created_at:%Y-%m-%d %H:%M:%S}",
        )
    console.print(rows)


@orders_app.command("show")
def orders_show(order_id: uuid.UUID, tenant: TenantOption) -> None:
    """One order with its lines."""
    with cli_runtime() as runtime:
        order = service.get_order(_ctx(runtime, tenant), order_id)
    console.print(
        f"order {order.id}  [bold]{order.status.value}[/]  "
        f"{order.total:.2f} {escape(order.currency)}"
    )
    lines = Table("sku", "name", "qty", "unit", "total")
    for line in order.lines:
        lines.add_row(
            plain(line.sku),
            plain(line.name),
            str(line.quantity),
            f"{line.unit_price:.2f}",
            f"{line.line_total:.2f}",
        )
    console.print(lines)


@orders_app.command("cancel")
def orders_cancel(
    order_id: uuid.UUID,
    tenant: TenantOption,
    reason: Annotated[str | None, typer.Option(help="Why.")] = None,
) -> None:
    """Cancel a pending order; its stock is restored once."""
    body = _valid(CancelIn, reason=reason)
    with cli_runtime() as runtime:
        order, changed = service.cancel_order(_ctx(runtime, tenant), order_id, reason=body.reason)
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
    data = _valid(
        ProductIn, sku=sku, name=name, price=_amount(price), stock=stock, currency=currency
    )
    with cli_runtime() as runtime:
        product = service.create_product(_ctx(runtime, tenant), data)
    console.print(f"product {escape(product.sku)} {product.id} created with stock {product.stock}")


def _amount(text: str) -> Decimal:
    try:
        amount = Decimal(text.strip())
    except InvalidOperation:
        amount = Decimal("NaN")
    if not amount.is_finite():
        raise typer.BadParameter(f"{text!r} is not an amount like 12.50", param_hint="--price")
    return amount


def _valid(model: type[M], **values: object) -> M:
    """The request the options describe, checked as the API checks it; the first
    invalid option is a usage error (exit 2) naming it."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        option = f"--{error['loc'][0]}" if error["loc"] else None
        raise typer.BadParameter(error["msg"], param_hint=option) from None


@products_app.command("list")
def products_list(
    tenant: TenantOption, limit: Annotated[int, typer.Option(min=1, max=200)] = 50
) -> None:
    """The products of a tenant."""
    with cli_runtime() as runtime:
        page = service.list_products(_ctx(runtime, tenant), cursor=None, limit=limit)
    rows = table(id_column(), "sku", "name", "price", "stock")
    for p in page.items:
        rows.add_row(
            str(p.id),
            plain(p.sku),
            plain(p.name),
            plain(f"{p.price:.2f} {p.currency}"),
            str(p.stock),
        )
    console.print(rows)


@products_app.command("adjust-stock")
def products_adjust_stock(
    product_id: uuid.UUID,
    tenant: TenantOption,
    delta: Annotated[int, typer.Option(help="Units to add; negative removes.")],
    reason: Annotated[str, typer.Option(help="Why (kept with the StockAdjusted event).")],
) -> None:
    """Add or remove stock with a reason; never below zero nor above the maximum."""
    body = _valid(StockAdjustmentIn, delta=delta, reason=reason)
    with cli_runtime() as runtime:
        product = service.adjust_stock(
            _ctx(runtime, tenant), product_id, delta=body.delta, reason=body.reason
        )
    console.print(f"{escape(product.sku)} stock is now {product.stock}")
