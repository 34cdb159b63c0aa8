"""The payment worker and the sweeper: at-least-once delivery, exactly-once effects."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from opsline.db import utcnow
from opsline.orders.gateway import ChargeOutcome, ChargeResult, gateway_for
from opsline.orders.jobs import (
    _finish,
    _start_processing,
    capture_payment,
    refund_payment,
)
from opsline.orders.models import Order, PaymentAttempt
from opsline.orders.sweep import sweep_stuck_orders
from opsline.platform.engine.models import EventRecord
from opsline.platform.runtime import Runtime
from tests.orders.conftest import Shop, job_context, order_row


def _events(runtime: Runtime, event_type: str) -> int:
    with runtime.db.read() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(EventRecord).where(EventRecord.type == event_type)
            )
            or 0
        )


def test_payment_moves_the_order_to_paid_once(shop: Shop, runtime: Runtime) -> None:
    product = shop.product(stock=3)
    order = shop.order([(product["id"], 1)]).json()
    ctx = job_context(runtime, shop.owner.tenant_id)
    assert capture_payment(ctx, order_id=order["id"]) == "paid"
    # A redelivered or duplicated job: no second charge, transition or event.
    assert capture_payment(ctx, order_id=order["id"]) == "nothing to do"
    settled = order_row(runtime, order["id"])
    assert settled.status == "PAID"
    assert settled.payment_reference == f"order-{order['id']}"
    assert _events(runtime, "orders.order_paid") == 1
    with runtime.db.read() as session:
        attempts = session.scalars(select(PaymentAttempt)).all()
    assert [(a.attempt, a.outcome) for a in attempts] == [(1, "succeeded")]
    assert shop.stock(product["id"]) == 2


class TestDeclined:
    @pytest.fixture
    def settings_overrides(self, settings_overrides: dict[str, object]) -> dict[str, object]:
        return {**settings_overrides, "payment_success_rate": 0.0}

    def test_declined_payment_fails_the_order_and_releases_stock(
        self, shop: Shop, runtime: Runtime
    ) -> None:
        product = shop.product(stock=3)
        order = shop.order([(product["id"], 2)]).json()
        assert shop.stock(product["id"]) == 1
        ctx = job_context(runtime, shop.owner.tenant_id)
        assert capture_payment(ctx, order_id=order["id"]) == "failed"
        assert capture_payment(ctx, order_id=order["id"]) == "nothing to do"
        assert order_row(runtime, order["id"]).status == "FAILED"
        assert shop.stock(product["id"]) == 3
        assert _events(runtime, "orders.order_failed") == 1


def test_a_job_crashed_mid_charge_charges_again_under_the_same_reference(
    shop: Shop, runtime: Runtime
) -> None:
    product = shop.product(stock=3)
    order = shop.order([(product["id"], 1)]).json()
    # The first delivery moved the order to PROCESSING and died before finishing.
    with runtime.db.unit_of_work() as uow:
        uow.session.execute(
            update(Order)
            .where(Order.id == uuid.UUID(order["id"]))
            .values(status="PROCESSING", payment_attempt=1, processing_started_at=utcnow())
        )
    ctx = job_context(runtime, shop.owner.tenant_id)
    assert capture_payment(ctx, order_id=order["id"]) == "paid"
    assert order_row(runtime, order["id"]).payment_reference == f"order-{order['id']}"


def test_cancelled_order_is_never_charged(shop: Shop, runtime: Runtime) -> None:
    product = shop.product(stock=3)
    order = shop.order([(product["id"], 1)]).json()
    shop.client.post(f"/api/v1/orders/{order['id']}/cancel", headers=shop.member.headers)
    assert capture_payment(job_context(runtime, shop.owner.tenant_id), order_id=order["id"]) == (
        "nothing to do"
    )
    with runtime.db.read() as session:
        assert session.scalar(select(func.count()).select_from(PaymentAttempt)) == 0


def _stick(runtime: Runtime, order_id: str, attempt: int) -> None:
    with runtime.db.unit_of_work() as uow:
        uow.session.execute(
            update(Order)
            .where(Order.id == uuid.UUID(order_id))
            .values(
                status="PROCESSING",
                payment_attempt=attempt,
                processing_started_at=utcnow() - timedelta(hours=1),
            )
        )


def test_sweeper_retries_a_stuck_order_then_fails_it(shop: Shop, runtime: Runtime) -> None:
    product = shop.product(stock=5)
    retried = shop.order([(product["id"], 1)]).json()
    exhausted = shop.order([(product["id"], 2)]).json()
    fresh = shop.order([(product["id"], 1)]).json()
    _stick(runtime, retried["id"], attempt=1)
    _stick(runtime, exhausted["id"], attempt=runtime.settings.order_payment_max_attempts)
    with runtime.db.unit_of_work() as uow:
        uow.session.execute(
            update(Order)
            .where(Order.id == uuid.UUID(fresh["id"]))
            .values(status="PROCESSING", payment_attempt=1, processing_started_at=utcnow())
        )
    assert sweep_stuck_orders(job_context(runtime, None))["resolved"] == 2
    assert order_row(runtime, exhausted["id"]).status == "FAILED"
    assert order_row(runtime, retried["id"]).payment_attempt == 2
    assert order_row(runtime, fresh["id"]).status == "PROCESSING"  # not stuck yet
    assert shop.stock(product["id"]) == 1 + 2  # 5 - 4 ordered + 2 released
    # The retry asks again under the order's one reference.
    assert (
        capture_payment(job_context(runtime, shop.owner.tenant_id), order_id=retried["id"])
        == "paid"
    )
    assert order_row(runtime, retried["id"]).payment_reference == f"order-{retried['id']}"
    # A second sweep finds nothing stuck.
    assert sweep_stuck_orders(job_context(runtime, None))["resolved"] == 0


def _attempts(runtime: Runtime, order_id: str) -> list[tuple[int, str, str | None]]:
    with runtime.db.read() as session:
        rows = session.scalars(
            select(PaymentAttempt)
            .where(PaymentAttempt.order_id == uuid.UUID(order_id))
            .order_by(PaymentAttempt.attempt)
        ).all()
    return [(a.attempt, a.reference, a.outcome) for a in rows]


def _jobs(runtime: Runtime, name: str) -> list[Any]:
    from opsline.platform.engine.models import Job

    with runtime.db.read() as session:
        return list(session.scalars(select(Job).where(Job.name == name)))


def test_a_slow_attempt_and_the_sweepers_retry_get_one_answer(shop: Shop, runtime: Runtime) -> None:
    """A worker stalls mid-charge; the sweeper retries the order; both charges
    then go out under one reference, so the gateway answers both alike and the
    later answer cannot undo the first (no FAILED order after a charge)."""
    product = shop.product(stock=3)
    order = shop.order([(product["id"], 1)]).json()
    order_id = uuid.UUID(order["id"])
    tenant_id = shop.owner.tenant_id
    ctx = job_context(runtime, tenant_id)
    slow = _start_processing(ctx, tenant_id, order_id, wait=True)
    assert slow is not None
    _stick(runtime, order["id"], attempt=1)
    assert sweep_stuck_orders(job_context(runtime, None))["resolved"] == 1
    retry = _start_processing(ctx, tenant_id, order_id, wait=True)
    assert retry is not None and retry[0].payment_attempt == 2
    assert retry[1] == slow[1] == f"order-{order_id}"
    gateway = gateway_for(runtime.settings)
    answers = [
        gateway.charge(reference=reference, amount=row.total, currency=row.currency)
        for row, reference in (retry, slow)
    ]
    assert answers[0] == answers[1]
    outcome = answers[0].outcome
    first = _finish(ctx, tenant_id, order_id, 2, retry[1], answers[0], wait=True)
    late = _finish(ctx, tenant_id, order_id, 1, slow[1], answers[1], wait=True)
    expected = "paid" if outcome is ChargeOutcome.SUCCEEDED else "failed"
    assert (first, late) == (expected, "already settled")
    assert order_row(runtime, order["id"]).status == expected.upper()
    assert _attempts(runtime, order["id"]) == [
        (1, f"order-{order_id}", outcome.value),
        (2, f"order-{order_id}", outcome.value),
    ]
    assert _jobs(runtime, "orders.refund_payment") == []


def test_a_charge_that_comes_through_after_the_order_failed_is_refunded_once(
    shop: Shop, runtime: Runtime
) -> None:
    product = shop.product(stock=3)
    order = shop.order([(product["id"], 2)]).json()
    order_id = uuid.UUID(order["id"])
    tenant_id = shop.owner.tenant_id
    ctx = job_context(runtime, tenant_id)
    stalled = _start_processing(ctx, tenant_id, order_id, wait=True)
    assert stalled is not None
    # The sweeper gives up on the order: FAILED, stock back.
    _stick(runtime, order["id"], attempt=runtime.settings.order_payment_max_attempts)
    assert sweep_stuck_orders(job_context(runtime, None))["resolved"] == 1
    assert order_row(runtime, order["id"]).status == "FAILED"
    assert shop.stock(product["id"]) == 3
    # Then the stalled worker's charge comes back: the money was taken.
    charged = ChargeResult(ChargeOutcome.SUCCEEDED, "charged")
    attempt = stalled[0].payment_attempt
    assert _finish(ctx, tenant_id, order_id, attempt, stalled[1], charged, wait=True) == (
        "refund due"
    )
    [refund] = _jobs(runtime, "orders.refund_payment")
    assert refund.args == {"order_id": str(order_id)}
    assert refund_payment(ctx, order_id=order_id) == "refunded"
    assert refund_payment(ctx, order_id=order_id) == "already refunded"
    assert [outcome for _, _, outcome in _attempts(runtime, order["id"])] == ["refunded"]
    assert _events(runtime, "orders.payment_refunded") == 1
    assert _events(runtime, "orders.order_paid") == 0
    assert order_row(runtime, order["id"]).status == "FAILED"
    assert shop.stock(product["id"]) == 3  # released once, by the sweeper


def test_a_refund_is_only_for_a_failed_order(shop: Shop, runtime: Runtime) -> None:
    product = shop.product(stock=3)
    order = shop.order([(product["id"], 1)]).json()
    ctx = job_context(runtime, shop.owner.tenant_id)
    assert refund_payment(ctx, order_id=uuid.UUID(order["id"])) == "nothing to refund"
    assert capture_payment(ctx, order_id=order["id"]) == "paid"
    assert refund_payment(ctx, order_id=uuid.UUID(order["id"])) == "nothing to refund"
    assert _events(runtime, "orders.payment_refunded") == 0


def test_placing_an_order_enqueues_its_payment_in_the_same_transaction(
    shop: Shop, runtime: Runtime
) -> None:
    from opsline.platform.engine.models import Job

    product = shop.product(stock=1)
    refused = shop.order([(product["id"], 2)])
    assert refused.status_code == 409
    placed = shop.order([(product["id"], 1)]).json()
    with runtime.db.read() as session:
        jobs: list[Any] = list(
            session.scalars(select(Job).where(Job.name == "orders.capture_payment"))
        )
    assert [job.args["order_id"] for job in jobs] == [placed["id"]]
