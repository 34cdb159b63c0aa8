"""Taking and giving back stock with conditional updates, all or nothing.

Decrements run in product-id order so that two orders over the same products
always lock them in the same order (no deadlock on PostgreSQL), and each is
``stock = stock - q WHERE stock >= q``: stock can never go negative, whatever
the concurrency, and the CHECK constraint backs that up. Only a product still
on sale is taken: one archived after the order read it is refused, not sold.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select, update

from opsline.db import UnitOfWork, utcnow
from opsline.orders.errors import InsufficientStock, InvalidOrder, StockAboveMaximum
from opsline.orders.models import STOCK_CEILING, Product, lines_table, products_table
from opsline.platform.last_seen import SeenChanged

P = products_table.c
L = lines_table.c
_TAKE = (
    update(products_table)
    .where(
        P.id == bindparam("b_id"),
        P.tenant_id == bindparam("b_tenant_id"),
        P.stock >= bindparam("b_quantity"),
        P.archived_at.is_(None),
        P.deleted_at.is_(None),
    )
    .values(stock=P.stock - bindparam("b_quantity"), updated_at=bindparam("b_now"))
    .returning(P.id)
)

# The same decrement, only if the product is still what the order was priced from.
_TAKE_AS_SEEN = _TAKE.where(
    P.sku == bindparam("b_sku"),
    P.name == bindparam("b_name"),
    P.price == bindparam("b_price"),
    P.currency == bindparam("b_currency"),
)


def take(
    uow: UnitOfWork,
    tenant_id: uuid.UUID,
    quantities: Mapping[uuid.UUID, int],
    *,
    now: datetime | None = None,
    as_seen: Mapping[uuid.UUID, Any] | None = None,
) -> None:
    """Decrement every product or none; raises InsufficientStock naming each short
    product, or InvalidOrder naming any archived meanwhile.

    Each decrement must change its row, else the unit of work is rolled back
    and the shortage is reported from the stock then left. One product's
    decrement is held back: on PostgreSQL it goes, checked, in the statement
    that sends the unit's other writes. Several are sent one by one in product
    order, so that two orders over the same products lock them in one order.

    ``as_seen``: the products (sku, name, price, currency) as the order was
    priced from them without reading them (``opsline.platform.last_seen``); each
    decrement then also checks that its product is unchanged, and any refusal
    raises ``SeenChanged`` instead (a shortage included).
    """
    now = now or utcnow()
    for product_id in sorted(quantities):
        params = {
            "b_id": product_id,
            "b_tenant_id": tenant_id,
            "b_quantity": quantities[product_id],
            "b_now": now,
        }
        if as_seen is None:
            uow.execute_later(
                _TAKE, params, expect=1, otherwise=lambda: _shortage(uow, tenant_id, quantities)
            )
        else:
            seen = as_seen[product_id]
            params.update(
                b_sku=seen.sku, b_name=seen.name, b_price=seen.price, b_currency=seen.currency
            )
            uow.execute_later(_TAKE_AS_SEEN, params, expect=1, otherwise=SeenChanged)
        if len(quantities) > 1:
            uow.send()


def _shortage(
    uow: UnitOfWork, tenant_id: uuid.UUID, quantities: Mapping[uuid.UUID, int]
) -> InsufficientStock | InvalidOrder:
    # Called with the unit rolled back: what is in stock is what is available.
    rows = uow.lookup(
        select(Product.id, Product.sku, Product.stock).where(
            Product.tenant_id == tenant_id,
            Product.id.in_(list(quantities)),
            Product.archived_at.is_(None),
            Product.deleted_at.is_(None),
        )
    ).all()
    gone = sorted(str(pid) for pid in set(quantities) - {row.id for row in rows})
    if gone:
        return InvalidOrder(
            f"unknown or archived products: {', '.join(gone)}", unknown_products=gone
        )
    short = [
        {
            "product_id": str(product_id),
            "sku": sku,
            "requested": quantities[product_id],
            "available": stock,
        }
        for product_id, sku, stock in sorted(rows)
        if stock < quantities[product_id]
    ]
    names = ", ".join(f"{s['sku']} (available {s['available']})" for s in short)
    return InsufficientStock(f"not enough stock for {names or 'some products'}", short=short)


_LINES = (
    select(L.product_id, L.quantity)
    .where(L.order_id == bindparam("order_id"), L.tenant_id == bindparam("tenant_id"))
    .order_by(L.product_id)
)
_GIVE_BACK = (
    update(products_table)
    .where(
        P.id == bindparam("b_id"),
        P.tenant_id == bindparam("b_tenant_id"),
        # Else the CHECK refuses it, a 500: above it only after a billion units
        # were added while a billion more were out in open orders.
        P.stock <= STOCK_CEILING - bindparam("b_quantity"),
    )
    .values(stock=P.stock + bindparam("b_quantity"), updated_at=bindparam("b_now"))
)


def give_back(conn: Connection, tenant_id: uuid.UUID, order_id: uuid.UUID) -> None:
    """Return an order's quantities to stock. The caller's transition guard makes
    this run at most once per order."""
    lines = conn.execute(_LINES, {"order_id": order_id, "tenant_id": tenant_id}).all()
    now = utcnow()
    for product_id, quantity in lines:
        given = conn.execute(
            _GIVE_BACK,
            {"b_id": product_id, "b_tenant_id": tenant_id, "b_quantity": quantity, "b_now": now},
        )
        if given.rowcount != 1:
            sku, stock = conn.execute(
                select(P.sku, P.stock).where(P.id == product_id, P.tenant_id == tenant_id)
            ).one()
            raise StockAboveMaximum(
                f"giving back {quantity} units of {sku} would take its stock of {stock} past "
                f"{STOCK_CEILING}, the most it holds; adjust its stock down first",
                stock=stock,
                maximum=STOCK_CEILING,
            )
