"""Taking and giving back stock with conditional updates, all or nothing.

Decrements run in product-id order so that two orders over the same products
always lock them in the same order (no deadlock on PostgreSQL), and each is
``stock = stock - q WHERE stock >= q``: stock can never go negative, whatever
the concurrency, and the CHECK constraint backs that up.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import Connection, bindparam, select, update

from opsline.db import utcnow
from opsline.orders.errors import InsufficientStock
from opsline.orders.models import Product, lines_table, products_table

P = products_table.c
L = lines_table.c
_TAKE = (
    update(products_table)
    .where(
        P.id == bindparam("b_id"),
        P.tenant_id == bindparam("b_tenant_id"),
        P.stock >= bindparam("b_quantity"),
    )
    .values(stock=P.stock - bindparam("b_quantity"), updated_at=bindparam("b_now"))
)


def take(
    conn: Connection,
    tenant_id: uuid.UUID,
    quantities: Mapping[uuid.UUID, int],
    *,
    now: datetime | None = None,
) -> None:
    """Decrement every product or none; raises InsufficientStock naming each short product.

    Must run inside a transaction the caller rolls back on error (a savepoint
    or the unit of work), since earlier decrements stand until then.
    """
    now = now or utcnow()
    for product_id in sorted(quantities):
        quantity = quantities[product_id]
        result = conn.execute(
            _TAKE,
            {"b_id": product_id, "b_tenant_id": tenant_id, "b_quantity": quantity, "b_now": now},
        )
        if result.rowcount != 1:
            raise _shortage(conn, tenant_id, quantities, product_id)


def _shortage(
    conn: Connection,
    tenant_id: uuid.UUID,
    quantities: Mapping[uuid.UUID, int],
    failed: uuid.UUID,
) -> InsufficientStock:
    # Decrements made so far in this transaction are added back to report what
    # is really available to this order.
    taken = {pid: q for pid, q in quantities.items() if pid < failed}
    rows = conn.execute(
        select(Product.id, Product.sku, Product.stock).where(
            Product.tenant_id == tenant_id, Product.id.in_(list(quantities))
        )
    ).all()
    short = []
    for product_id, sku, stock in rows:
        available = stock + taken.get(product_id, 0)
        if available < quantities[product_id]:
            short.append(
                {
                    "product_id": str(product_id),
                    "sku": sku,
                    "requested": quantities[product_id],
                    "available": available,
                }
            )
    names = ", ".join(f"{s['sku']} (available {s['available']})" for s in short)
    return InsufficientStock(f"not enough stock for {names or 'some products'}", short=short)


_LINES = (
    select(L.product_id, L.quantity)
    .where(L.order_id == bindparam("order_id"), L.tenant_id == bindparam("tenant_id"))
    .order_by(L.product_id)
)
_GIVE_BACK = (
    update(products_table)
    .where(P.id == bindparam("b_id"), P.tenant_id == bindparam("b_tenant_id"))
    .values(stock=P.stock + bindparam("b_quantity"), updated_at=bindparam("b_now"))
)


def give_back(conn: Connection, tenant_id: uuid.UUID, order_id: uuid.UUID) -> None:
    """Return an order's quantities to stock. The caller's transition guard makes
    this run at most once per order."""
    lines = conn.execute(_LINES, {"order_id": order_id, "tenant_id": tenant_id}).all()
    now = utcnow()
    for product_id, quantity in lines:
        conn.execute(
            _GIVE_BACK,
            {"b_id": product_id, "b_tenant_id": tenant_id, "b_quantity": quantity, "b_now": now},
        )
