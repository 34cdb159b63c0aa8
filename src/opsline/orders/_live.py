"""Live order status: after-commit pushes on private channels.

Channels: ``orders:<tenant>:user:<user>`` for one user's orders and
``orders:<tenant>`` for the whole tenant (managers). Messages carry the
status-log sequence number, so a client that reconnects resumes from the log.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from opsline.db import UnitOfWork
from opsline.platform.engine.changes import send_after_commit


def user_channel(tenant_id: uuid.UUID, user_id: uuid.UUID) -> str:
    return f"orders:{tenant_id}:user:{user_id}"


def tenant_channel(tenant_id: uuid.UUID) -> str:
    return f"orders:{tenant_id}"


def status_message(seq: int, order: Any, status: str) -> dict[str, Any]:
    return {
        "seq": seq,
        "order_id": str(order.id),
        "status": status,
        "total": f"{order.total:.2f}",
        "currency": order.currency,
        "at": order.updated_at.isoformat(),
    }


def channels(order: Any) -> list[str]:
    """Where an order's status changes go: the tenant's channel, and its user's."""
    found = [tenant_channel(order.tenant_id)]
    if order.user_id is not None:
        found.append(user_channel(order.tenant_id, order.user_id))
    return found


def push_after_commit(uow: UnitOfWork, seq: int, order: Any, status: str) -> None:
    pusher(uow, order, status)(seq)


def pusher(uow: UnitOfWork, order: Any, status: str) -> Callable[[int], None]:
    """What pushes the order's status once its ``seq`` is known; ``order`` is read now."""
    message = status_message(0, order, status)
    names = channels(order)

    def push(seq: int) -> None:
        for name in names:
            send_after_commit(uow, name, {**message, "seq": seq})

    return push
