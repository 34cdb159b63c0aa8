"""The order state machine, declared once.

Every transition is one conditional ``UPDATE ... WHERE status = :expected``:
of two concurrent transitions from the same state exactly one wins, with no
read-then-write window. The loser learns the current state and gets a 409.
"""

from __future__ import annotations

import enum
import uuid
from typing import Any

from sqlalchemy import Row, insert, select, update

from opsline.db import UnitOfWork, utcnow
from opsline.orders._live import push_after_commit
from opsline.orders.errors import InvalidTransition, OrderNotFound
from opsline.orders.models import changes_table, orders_table


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


def record_status(uow: UnitOfWork, order: Any, status: OrderStatus) -> None:
    """Append to the status log and push the change to live subscribers after commit.

    ``order`` is anything with the order's columns as attributes (a row or a model).
    """
    seq = uow.session.execute(
        insert(changes_table)
        .values(
            tenant_id=order.tenant_id,
            user_id=order.user_id,
            order_id=order.id,
            status=status.value,
            total=order.total,
            currency=order.currency,
            at=order.updated_at,
        )
        .returning(changes_table.c.seq)
    ).scalar_one()
    push_after_commit(uow, seq, order, status.value)


def transition(
    uow: UnitOfWork,
    *,
    tenant_id: uuid.UUID,
    order_id: uuid.UUID,
    source: OrderStatus,
    target: OrderStatus,
    **values: Any,
) -> Row[Any] | None:
    """Move an order from ``source`` to ``target``; None when it was not in ``source``.

    Also appends the change to the status log in the same transaction.
    """
    if not is_allowed(source, target):
        raise InvalidTransition(f"an order cannot go from {source} to {target}")
    cols = orders_table.c
    row = uow.session.execute(
        update(orders_table)
        .where(cols.id == order_id, cols.tenant_id == tenant_id, cols.status == source.value)
        .values(status=target.value, updated_at=utcnow(), **values)
        .returning(*orders_table.c)
    ).first()
    if row is None:
        return None
    record_status(uow, row, target)
    return row


def require(
    uow: UnitOfWork,
    *,
    tenant_id: uuid.UUID,
    order_id: uuid.UUID,
    source: OrderStatus,
    target: OrderStatus,
    **values: Any,
) -> Row[Any]:
    """Like :func:`transition`, but a refused transition is a 409 naming the current state."""
    row = transition(
        uow, tenant_id=tenant_id, order_id=order_id, source=source, target=target, **values
    )
    if row is not None:
        return row
    cols = orders_table.c
    current = uow.session.scalar(
        select(cols.status).where(cols.id == order_id, cols.tenant_id == tenant_id)
    )
    if current is None:
        raise OrderNotFound(f"order {order_id} not found")
    raise InvalidTransition(f"order is {current}; it cannot go to {target}", current_status=current)
