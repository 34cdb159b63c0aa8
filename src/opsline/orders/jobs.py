"""Jobs of the orders capability: the payment worker and the refund (the sweeper of
stuck orders is in :mod:`opsline.orders.sweep`).

Delivery is at least once, so each job reloads the order and acts only through
guarded transitions: a duplicated or redelivered ``capture_payment`` makes one
charge attempt per order attempt, one transition and one event. Every attempt
of an order charges under the order's one reference, the gateway's idempotency
key: a sweep's retry asks again for the charge a dead worker may have made, and
the gateway answers it as it did the first time rather than charging twice. A
charge that comes through for an order that has meanwhile failed (the sweeper
gave up on it) is refunded by ``refund_payment``.
"""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from opsline.db import UnitOfWork, new_id, utcnow
from opsline.orders import _stock
from opsline.orders._state import NEXT_PAYMENT_ATTEMPT, OrderStatus, transition
from opsline.orders.events import OrderFailed, OrderPaid, PaymentRefunded
from opsline.orders.gateway import ChargeOutcome, ChargeResult, gateway_for
from opsline.orders.models import attempts_table, orders_table
from opsline.platform.engine.context import JobContext
from opsline.platform.engine.events import publish
from opsline.platform.engine.registry import RetryPolicy, job

log = structlog.get_logger(__name__)


def reference_for(order_id: uuid.UUID) -> str:
    """The gateway's idempotency key for the order's payment, the same in every attempt."""
    return f"order-{order_id}"


@job(
    "orders.capture_payment",
    queue="high",
    max_attempts=8,
    timeout=60,
    retry=RetryPolicy(base=1.0, cap=60.0),
    unique=["order_id", "attempt"],
)
def capture_payment(ctx: JobContext, order_id: uuid.UUID, attempt: int = 1) -> str:
    """PENDING -> PROCESSING, charge outside any transaction, then PAID or FAILED.

    A transient gateway error raises, so the engine retries with backoff; the
    order stays PROCESSING and the retry charges under the same reference.
    ``attempt`` only keys uniqueness: the sweeper's retry of a stuck order is a
    new job even while the dead worker's job still holds its lease; both then
    charge under the order's reference, which the gateway dedupes, and get the
    same answer, so whichever finishes first settles the order.
    """
    tenant_id = ctx.tenant_id
    assert tenant_id is not None, "orders.capture_payment runs for a tenant"
    claimed = ctx.short_unit(lambda wait: _start_processing(ctx, tenant_id, order_id, wait))
    if claimed is None:
        return "nothing to do"
    order, reference = claimed
    ctx.check_cancelled()
    result = gateway_for(ctx.settings).charge(
        reference=reference, amount=order.total, currency=order.currency
    )
    attempt = order.payment_attempt
    return ctx.short_unit(
        lambda wait: _finish(ctx, tenant_id, order_id, attempt, reference, result, wait)
    )


_O = orders_table.c
_A = attempts_table.c
# Built once: a statement object reused keeps its compiled form and cache key.
_ORDER = select(orders_table).where(
    _O.id == bindparam("order_id"), _O.tenant_id == bindparam("tenant_id")
)
# Every value a named parameter: both are held back (UnitOfWork.execute_later)
# and travel with the transaction's next statement.
_ATTEMPT_COLUMNS = ("id", "tenant_id", "order_id", "attempt", "reference", "created_at")
_RECORD_ATTEMPT = {
    name: factory(attempts_table)
    .values({c: bindparam(c, type_=_A[c].type) for c in _ATTEMPT_COLUMNS})
    .on_conflict_do_nothing(index_elements=["tenant_id", "order_id", "attempt"])
    for name, factory in (("postgresql", pg_insert), ("sqlite", sqlite_insert))
}
_ATTEMPT_OUTCOME = (
    update(attempts_table)
    .where(
        _A.tenant_id == bindparam("b_tenant_id"),
        _A.order_id == bindparam("b_order_id"),
        _A.attempt == bindparam("b_attempt"),
    )
    .values({c: bindparam(c, type_=_A[c].type) for c in ("outcome", "detail", "finished_at")})
)


def _start_processing(
    ctx: JobContext, tenant_id: uuid.UUID, order_id: uuid.UUID, wait: bool
) -> tuple[Any, str] | None:
    """The order (as a row) and its current attempt's reference, or None if not payable."""
    with ctx.db.unit_of_work(wait=wait) as uow:
        order: Any = transition(
            uow,
            tenant_id=tenant_id,
            order_id=order_id,
            source=OrderStatus.PENDING,
            target=OrderStatus.PROCESSING,
            processing_started_at=utcnow(),
            payment_attempt=NEXT_PAYMENT_ATTEMPT,
        )
        if order is None:
            order = uow.connection.execute(
                _ORDER, {"order_id": order_id, "tenant_id": tenant_id}
            ).first()
            if order is None or order.status != OrderStatus.PROCESSING.value:
                return None  # cancelled, finished, or gone: nothing to charge
        reference = reference_for(order_id)
        _record_attempt(uow, order, reference)
        return order, reference


def _record_attempt(uow: UnitOfWork, order: Any, reference: str) -> None:
    values = {
        "id": new_id(),
        "tenant_id": order.tenant_id,
        "order_id": order.id,
        "attempt": order.payment_attempt,
        "reference": reference,
        "created_at": utcnow(),
    }
    uow.execute_later(_RECORD_ATTEMPT[uow.bind.dialect.name], values)


def _finish(
    ctx: JobContext,
    tenant_id: uuid.UUID,
    order_id: uuid.UUID,
    attempt: int,
    reference: str,
    result: ChargeResult,
    wait: bool,
) -> str:
    paid = result.outcome is ChargeOutcome.SUCCEEDED
    with ctx.db.unit_of_work(wait=wait) as uow:
        uow.execute_later(
            _ATTEMPT_OUTCOME,
            {
                "b_tenant_id": tenant_id,
                "b_order_id": order_id,
                "b_attempt": attempt,
                "outcome": result.outcome.value,
                "detail": result.detail,
                "finished_at": utcnow(),
            },
        )
        if not paid:
            return _mark_failed(uow, tenant_id, order_id, result.detail)
        settled = _mark_paid(uow, tenant_id, order_id, reference)
        if settled == "paid":
            return settled
        order = uow.connection.execute(_ORDER, {"order_id": order_id, "tenant_id": tenant_id})
        if order.one().status == OrderStatus.FAILED.value:
            # The money came through after the sweeper gave up on the order and
            # released its stock: it is owed back (durably: a job of its own).
            refund_payment.enqueue(uow, tenant_id=tenant_id, order_id=order_id)
            return "refund due"
        return settled  # PAID already, under this same reference: one charge


def _mark_paid(uow: UnitOfWork, tenant_id: uuid.UUID, order_id: uuid.UUID, reference: str) -> str:
    order = transition(
        uow,
        tenant_id=tenant_id,
        order_id=order_id,
        source=OrderStatus.PROCESSING,
        target=OrderStatus.PAID,
        paid_at=utcnow(),
        payment_reference=reference,
    )
    if order is None:
        return "already settled"
    publish(
        uow,
        OrderPaid(
            tenant_id=tenant_id,
            order_id=order_id,
            user_id=order.user_id,
            total=order.total,
            currency=order.currency,
            payment_reference=reference,
        ),
    )
    return "paid"


def _mark_failed(uow: UnitOfWork, tenant_id: uuid.UUID, order_id: uuid.UUID, reason: str) -> str:
    """PROCESSING -> FAILED and the stock released, together and at most once."""
    order = transition(
        uow,
        tenant_id=tenant_id,
        order_id=order_id,
        source=OrderStatus.PROCESSING,
        target=OrderStatus.FAILED,
        failure_reason=reason[:200],
    )
    if order is None:
        return "already settled"
    _stock.give_back(uow.connection, tenant_id, order_id)
    publish(
        uow,
        OrderFailed(tenant_id=tenant_id, order_id=order_id, user_id=order.user_id, reason=reason),
    )
    return "failed"


_REFUNDED = (
    update(attempts_table)
    .where(
        _A.tenant_id == bindparam("b_tenant_id"),
        _A.order_id == bindparam("b_order_id"),
        _A.outcome == ChargeOutcome.SUCCEEDED.value,
    )
    .values(outcome="refunded", detail=bindparam("detail"), finished_at=bindparam("finished_at"))
)


@job(
    "orders.refund_payment",
    queue="high",
    max_attempts=20,
    timeout=60,
    retry=RetryPolicy(base=5.0, cap=600.0),
    unique=["order_id"],
)
def refund_payment(ctx: JobContext, order_id: uuid.UUID) -> str:
    """Give back a FAILED order's charge: the gateway refunds under the order's
    reference (twice is once), and its attempts turn ``refunded`` with one event."""
    tenant_id = ctx.tenant_id
    assert tenant_id is not None, "orders.refund_payment runs for a tenant"
    with ctx.db.read() as session:
        order: Any = session.execute(_ORDER, {"order_id": order_id, "tenant_id": tenant_id}).first()
    if order is None or order.status != OrderStatus.FAILED.value:
        return "nothing to refund"
    reference = reference_for(order_id)
    gateway_for(ctx.settings).refund(
        reference=reference, amount=order.total, currency=order.currency
    )
    with ctx.unit_of_work() as uow:
        refunded = uow.execute(
            _REFUNDED,
            {
                "b_tenant_id": tenant_id,
                "b_order_id": order_id,
                "detail": f"refunded {order.total} {order.currency}: the order had failed",
                "finished_at": utcnow(),
            },
        )
        if refunded.rowcount == 0:
            return "already refunded"
        publish(
            uow,
            PaymentRefunded(
                tenant_id=tenant_id,
                order_id=order_id,
                user_id=order.user_id,
                total=order.total,
                currency=order.currency,
                payment_reference=reference,
            ),
        )
    return "refunded"
