"""Taking and giving back stock with conditional updates, all or nothing.

Decrements run in product-id order so that two orders over the same products
always lock them in the same order (no deadlock on PostgreSQL), and each is
``stock = stock - q WHERE stock >= q``: stock can never go negative, whatever
the concurrency, and the CHECK constraint backs that up.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from opsline.db import utcnow
from opsline.orders.errors import InsufficientStock
from opsline.orders.models import OrderLine, Product, products_table

P = products_table.c


def take(session: Session, tenant_id: uuid.UUID, quantities: Mapping[uuid.UUID, int]) -> None:
    """Decrement every product or none; raises InsufficientStock naming each short product.

    Must run inside a transaction the caller rolls back on error (a savepoint
    or the unit of work), since earlier decrements stand until then.
    """
    for product_id in sorted(quantities):
        quantity = quantities[product_id]
        result = session.execute(
            update(products_table)
            .where(P.id == product_id, P.tenant_id == tenant_id, P.stock >= quantity)
            .values(stock=P.stock - quantity, updated_at=utcnow())
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise _shortage(session, tenant_id, quantities, product_id)


def _shortage(
    session: Session, tenant_id: uuid.UUID, quantities: Mapping[uuid.UUID, int], failed: uuid.UUID
) -> InsufficientStock:
    # Decrements made so far in this transaction are added back to report what
    # is really available to this order.
    taken = {pid: q for pid, q in quantities.items() if pid < failed}
    rows = session.execute(
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


def give_back(session: Session, tenant_id: uuid.UUID, order_id: uuid.UUID) -> None:
    """Return an order's quantities to stock. The caller's transition guard makes
    this run at most once per order."""
    lines = session.execute(
        select(OrderLine.product_id, OrderLine.quantity)
        .where(OrderLine.order_id == order_id, OrderLine.tenant_id == tenant_id)
        .order_by(OrderLine.product_id)
    ).all()
    for product_id, quantity in lines:
        session.execute(
            update(products_table)
            .where(P.id == product_id, P.tenant_id == tenant_id)
            .values(stock=P.stock + quantity, updated_at=utcnow())
        )
