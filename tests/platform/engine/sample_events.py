"""Events and listeners used by the engine tests."""

from __future__ import annotations

import uuid
from typing import ClassVar

from opsline.platform.engine.context import JobContext
from opsline.platform.engine.events import Event, listener
from opsline.platform.engine.registry import RetryPolicy
from tests.platform.engine.sample_jobs import record


class OrderApproved(Event):
    event_type: ClassVar[str] = "tests.order_approved"
    version: ClassVar[int] = 1
    order_id: uuid.UUID
    amount_cents: int


@listener(OrderApproved, name="when_order_approved_record")
def when_order_approved_record(ctx: JobContext, event: OrderApproved) -> None:
    record("approved", (event.order_id, event.tenant_id, event.amount_cents))


@listener(
    OrderApproved,
    name="when_order_approved_fail",
    max_attempts=2,
    retry=RetryPolicy(base=0.01, cap=0.01),
)
def when_order_approved_fail(ctx: JobContext, event: OrderApproved) -> None:
    record("failing_listener", ctx.attempt)
    raise RuntimeError("this listener always fails")
