"""The order state machine, declared once.

Every transition is one conditional ``UPDATE ... WHERE status = :expected``:
of two concurrent transitions from the same state exactly one wins, with no
read-then-write window. The loser learns the current state and gets a 409.
"""

from __future__ import annotations

import enum
import uuid
from typing import Any

from sqlalchemy import select, update

from opsline.db import UnitOfWork, utcnow
from opsline.orders._live import push_after_commit
from opsline.orders.errors import InvalidTransition, OrderNotFound
from opsline.orders.models import Order, OrderStatusChange


class OrderStatus(enum.StrEnum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    PAID = "PAID"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


S = OrderStatus
TRANSITIONS: frozenset[tuple[OrderStatus, OrderStatus]] = frozenset(
    {
        (S.PENDING, S.PROCESSING),
        (S.PROCESSING, S.PAID),
        (S.PROCESSING, S.FAILED),
        (S.PENDING, S.CANCELLED),
    }
)


def is_allowed(source: OrderStatus, target: OrderStatus) -> bool:
    return (source, target) in TRANSITIONS


def record_status(uow: UnitOfWork, order: Order, status: OrderStatus) -> None:
    """Append to the status log and push the change to live subscribers after commit."""
    change = OrderStatusChange(
        tenant_id=order.tenant_id,
        user_id=order.user_id,
        order_id=order.id,
        status=status.value,
        total=order.total,
        currency=order.currency,
        at=order.updated_at,
    )
    uow.session.add(change)
    uow.session.flush()
    push_after_commit(uow, change.seq, order, status.value)


def transition(
    uow: UnitOfWork,
    *,
    tenant_id: uuid.UUID,
    order_id: uuid.UUID,
    source: OrderStatus,
    target: OrderStatus,
    **values: Any,
) -> Order | None:
    """Move an order from ``source`` to ``target``; None when it was not in ``source``.

    Also appends the change to the status log in the same transaction.
    """
    if not is_allowed(source, target):
        raise InvalidTransition(f"an order cannot go from {source} to {target}")
    now = utcnow()
    result = uow.session.execute(
        update(Order)
        .where(Order.id == order_id, Order.tenant_id == tenant_id, Order.status == source.value)
        .values(status=target.value, updated_at=now, **values)
        .returning(Order)
        # The caller may hold this order already: refresh it with the new row.
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    order = result.scalars().first()
    if order is None:
        return None
    record_status(uow, order, target)
    return order


def require(
    uow: UnitOfWork,
    *,
    tenant_id: uuid.UUID,
    order_id: uuid.UUID,
    source: OrderStatus,
    target: OrderStatus,
    **values: Any,
) -> Order:
    """Like :func:`transition`, but a refused transition is a 409 naming the current state."""
    order = transition(
        uow, tenant_id=tenant_id, order_id=order_id, source=source, target=target, **values
    )
    if order is not None:
        return order
    current = uow.session.scalar(
        select(Order.status).where(Order.id == order_id, Order.tenant_id == tenant_id)
    )
    if current is None:
        raise OrderNotFound(f"order {order_id} not found")
    raise InvalidTransition(f"order is {current}; it cannot go to {target}", current_status=current)
