"""Events the orders capability publishes (version 1)."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import ClassVar

from opsline.platform.engine.events import Event


class OrderCreated(Event):
    event_type: ClassVar[str] = "orders.order_created"
    order_id: uuid.UUID
    user_id: uuid.UUID | None
    total: Decimal
    currency: str
    lines: list[dict[str, object]]


class OrderPaid(Event):
    event_type: ClassVar[str] = "orders.order_paid"
    order_id: uuid.UUID
    user_id: uuid.UUID | None
    total: Decimal
    currency: str
    payment_reference: str


class PaymentRefunded(Event):
    """A charge given back: it came through after its order had failed."""

    event_type: ClassVar[str] = "orders.payment_refunded"
    order_id: uuid.UUID
    user_id: uuid.UUID | None
    total: Decimal
    currency: str
    payment_reference: str


class OrderFailed(Event):
    event_type: ClassVar[str] = "orders.order_failed"
    order_id: uuid.UUID
    user_id: uuid.UUID | None
    reason: str


class OrderCancelled(Event):
    event_type: ClassVar[str] = "orders.order_cancelled"
    order_id: uuid.UUID
    user_id: uuid.UUID | None
    reason: str | None


class StockAdjusted(Event):
    event_type: ClassVar[str] = "orders.stock_adjusted"
    product_id: uuid.UUID
    sku: str
    delta: int
    stock: int
    reason: str
