"""The sweeper: PENDING orders whose payment job died or was cancelled, and isolation.

An order is aged by moving its clock back (``updated_at``, or
``processing_started_at`` for PROCESSING) rather than by waiting out the timeout;
payment jobs are cancelled with the engine's admin API and dead-lettered by a
worker's store failing their last attempt, as a worker would.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from opsline.db import utcnow
from opsline.orders.jobs import _start_processing, capture_payment
from opsline.orders.models import STOCK_CEILING, Order, PaymentAttempt, Product
from opsline.orders.schemas import OrderIn
from opsline.orders.service import place_order
from opsline.orders.sweep import _BATCH, sweep_stuck_orders
from opsline.platform.auth.roles import Role
from opsline.platform.context import Context, Principal
from opsline.platform.engine._store import Failure, Outcome, Store
from opsline.platform.engine.models import EventRecord, Job
from opsline.platform.engine.service import Scope, cancel_job, retry_job
from opsline.platform.runtime import Runtime
from tests.orders.conftest import Shop, job_context, order_row, wait_for

LONG_AGO = timedelta(hours=1)


def _sweep(runtime: Runtime) -> tuple[int, int]:
    """How many orders a sweep resolved, and how many failed."""
    swept = sweep_stuck_orders(job_context(runtime, None, queue="default", max_attempts=3))
    return swept["resolved"], swept["failed"]


def _payment_jobs(runtime: Runtime, order_id: str) -> list[Job]:
    """The order's payment jobs, oldest first."""
    with runtime.db.read() as session:
        jobs = session.scalars(
            select(Job).where(Job.name == "orders.capture_payment").order_by(Job.id)
        ).all()
    return [job for job in jobs if job.args["order_id"] == order_id]


def _jobs_of(runtime: Runtime, order_id: str) -> list[tuple[int, str]]:
    return [(job.args["attempt"], job.state) for job in _payment_jobs(runtime, order_id)]


def _events(runtime: Runtime, event_type: str) -> int:
    with runtime.db.read() as session:
        count = session.scalar(
            select(func.count()).select_from(EventRecord).where(EventRecord.type == event_type)
        )
    return int(count or 0)


def _age(runtime: Runtime, *order_ids: str) -> None:
    """Make the orders idle past the timeout, as if placed (or last swept) long ago."""
    with runtime.db.unit_of_work() as uow:
        uow.session.execute(
            update(Order)
            .where(Order.id.in_([uuid.UUID(o) for o in order_ids]))
            .values(updated_at=utcnow() - LONG_AGO)
        )


def _live_job(runtime: Runtime, order_id: str) -> Job:
    [live] = [job for job in _payment_jobs(runtime, order_id) if job.state == "available"]
    return live


def _cancel_payment(runtime: Runtime, order_id: str) -> None:
    """An operator cancels the order's waiting payment job (``opsline jobs cancel``)."""
    cancelled = cancel_job(runtime.db, Scope.operator(), _live_job(runtime, order_id).id)
    assert cancelled.state == "cancelled"


def _claim(runtime: Runtime, worker: str, job_id: int) -> tuple[Store, Any]:
    """A worker's store claims the job (it runs); jobs claimed with it are given back."""
    store = Store(runtime.db, worker, 30)
    claimed = store.cycle([], [("high", 100)], promote=False)[0]
    [job] = [job for job in claimed if job.id == job_id]
    store.release([other for other in claimed if other.id != job_id])
    return store, job


def _fail_attempt(store: Store, job: Any, *, last: bool) -> None:
    retry_at = None if last else utcnow() + LONG_AGO
    failure = Failure("WorkerLost", "the worker died", "", retry_at)
    [applied] = store.cycle([Outcome(job, "failed", failure)], [], promote=False)[1].outcomes
    assert applied.job.id == job.id


def _dead_letter(runtime: Runtime, order_id: str) -> None:
    """The order's payment job fails its last attempt before it took the order: dead."""
    store, job = _claim(runtime, "doomed", _live_job(runtime, order_id).id)
    _fail_attempt(store, job, last=True)
    assert _payment_jobs(runtime, order_id)[-1].state == "dead"


def _use_up_attempts(runtime: Runtime, order_id: str) -> None:
    """Every attempt but the last has had its payment job cancelled and swept again;
    then the last one's is cancelled too, and the order left idle."""
    for _ in range(runtime.settings.order_payment_max_attempts - 1):
        _cancel_payment(runtime, order_id)
        _age(runtime, order_id)
        assert _sweep(runtime) == (1, 0)
    _cancel_payment(runtime, order_id)
    _age(runtime, order_id)


def _stick_processing(runtime: Runtime, shop: Shop, order_id: str, attempt: int) -> None:
    """A worker took the order and died; it has been PROCESSING for long, at ``attempt``."""
    tenant_id = shop.owner.tenant_id
    assert _start_processing(
        job_context(runtime, tenant_id, queue="default", max_attempts=3),
        tenant_id,
        uuid.UUID(order_id),
        True,
    )
    with runtime.db.unit_of_work() as uow:
        uow.session.execute(
            update(Order)
            .where(Order.id == uuid.UUID(order_id))
            .values(payment_attempt=attempt, processing_started_at=utcnow() - LONG_AGO)
        )


def test_a_pending_order_whose_payment_job_was_cancelled_gets_it_again_and_is_paid(
    shop: Shop, runtime: Runtime, request: pytest.FixtureRequest
) -> None:
    product = shop.product(stock=5)
    order = shop.order([(product["id"], 2)]).json()
    _cancel_payment(runtime, order["id"])
    _age(runtime, order["id"])

    swept = _sweep(runtime)

    assert swept == (1, 0)
    assert _jobs_of(runtime, order["id"]) == [(1, "cancelled"), (2, "available")]
    pending = order_row(runtime, order["id"])
    assert (pending.status, pending.payment_attempt) == ("PENDING", 1)
    assert shop.stock(product["id"]) == 3  # still held for the order
    # A real worker takes the new job and settles the order.
    request.getfixturevalue("worker")
    wait_for(lambda: order_row(runtime, order["id"]).status in ("PAID", "FAILED"))
    paid = order_row(runtime, order["id"])
    assert (paid.status, paid.payment_attempt) == ("PAID", 2)
    assert shop.stock(product["id"]) == 3  # conserved: 5 = 3 + 2 sold
    assert _events(runtime, "orders.order_paid") == 1
    with runtime.db.read() as session:
        attempts = session.execute(select(PaymentAttempt.attempt, PaymentAttempt.outcome)).all()
    assert [tuple(a) for a in attempts] == [(2, "succeeded")]


def test_a_pending_order_whose_payment_jobs_die_until_no_attempt_is_left_fails_once(
    shop: Shop, runtime: Runtime
) -> None:
    product = shop.product(stock=5)
    order = shop.order([(product["id"], 2)]).json()
    max_attempts = runtime.settings.order_payment_max_attempts
    for attempt in range(1, max_attempts + 1):
        _dead_letter(runtime, order["id"])
        _age(runtime, order["id"])
        assert _sweep(runtime) == (1, 0)
        assert order_row(runtime, order["id"]).payment_attempt == min(attempt, max_attempts - 1)

    failed = order_row(runtime, order["id"])
    assert failed.status == "FAILED"
    assert failed.failure_reason == "payment never started: its job was dead or cancelled"
    assert _jobs_of(runtime, order["id"]) == [(a, "dead") for a in range(1, max_attempts + 1)]
    assert shop.stock(product["id"]) == 5
    assert _events(runtime, "orders.order_failed") == 1
    # Nothing is left to sweep, and an operator retrying the dead job charges nothing.
    assert _sweep(runtime) == (0, 0)
    retry_job(runtime.db, Scope.operator(), _payment_jobs(runtime, order["id"])[-1].id)
    ctx = job_context(runtime, shop.owner.tenant_id, queue="default", max_attempts=3)
    assert capture_payment(ctx, order_id=order["id"], attempt=max_attempts) == "nothing to do"
    assert shop.stock(product["id"]) == 5
    assert _events(runtime, "orders.order_failed") == 1
    with runtime.db.read() as session:
        assert session.scalar(select(func.count()).select_from(PaymentAttempt)) == 0


def test_young_orders_and_orders_whose_payment_job_is_still_pending_are_left_alone(
    shop: Shop, runtime: Runtime
) -> None:
    product = shop.product(stock=10)
    young, running, retrying, waiting = (
        shop.order([(product["id"], 1)]).json()["id"] for _ in range(4)
    )
    _cancel_payment(runtime, young)  # not idle long enough yet
    _claim(runtime, "busy", _live_job(runtime, running).id)
    store, other = _claim(runtime, "flaky", _live_job(runtime, retrying).id)
    _fail_attempt(store, other, last=False)
    _age(runtime, running, retrying, waiting)
    jobs_before = {o: _jobs_of(runtime, o) for o in (young, running, retrying, waiting)}
    assert jobs_before[running] == [(1, "running")]
    assert jobs_before[retrying] == [(1, "retryable")]

    swept = _sweep(runtime)

    assert swept == (0, 0)
    for order_id in (young, running, retrying, waiting):
        order = order_row(runtime, order_id)
        assert (order.status, order.payment_attempt) == ("PENDING", 0)
        assert _jobs_of(runtime, order_id) == jobs_before[order_id]
    assert shop.stock(product["id"]) == 6


def _snapshot(runtime: Runtime) -> tuple[Any, ...]:
    with runtime.db.read() as session:
        orders = session.execute(
            select(Order.id, Order.status, Order.payment_attempt, Order.updated_at).order_by(
                Order.id
            )
        ).all()
        jobs = session.execute(select(Job.id, Job.state).order_by(Job.id)).all()
        stock = session.execute(select(Product.id, Product.stock).order_by(Product.id)).all()
        events = session.scalar(select(func.count()).select_from(EventRecord))
    return tuple(map(tuple, orders)), tuple(map(tuple, jobs)), tuple(map(tuple, stock)), events


def test_a_second_sweep_changes_nothing(shop: Shop, runtime: Runtime) -> None:
    product = shop.product(stock=10)
    requeued, exhausted, stuck = (shop.order([(product["id"], 2)]).json()["id"] for _ in range(3))
    _use_up_attempts(runtime, exhausted)
    _cancel_payment(runtime, requeued)
    _age(runtime, requeued)
    _stick_processing(runtime, shop, stuck, attempt=1)

    first = _sweep(runtime)
    assert first == (3, 0)
    assert [order_row(runtime, o).status for o in (requeued, exhausted, stuck)] == [
        "PENDING",
        "FAILED",
        "PROCESSING",
    ]
    before = _snapshot(runtime)
    second = _sweep(runtime)

    assert second == (0, 0)
    assert _snapshot(runtime) == before
    assert shop.stock(product["id"]) == 10 - 2 - 2
    assert _events(runtime, "orders.order_failed") == 1


def test_an_order_the_sweep_cannot_resolve_does_not_stop_the_others(
    shop: Shop, runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    good, full = shop.product(sku="GOOD", stock=10), shop.product(sku="FULL", stock=10)
    requeued, exhausted = (shop.order([(good["id"], 1)]).json()["id"] for _ in range(2))
    _use_up_attempts(runtime, exhausted)
    _cancel_payment(runtime, requeued)
    _age(runtime, requeued)
    # Given back, its units would take its product past the stock column's ceiling:
    # the database refuses the release, so giving up on the order fails.
    bad = shop.order([(full["id"], 2)]).json()["id"]
    max_attempts = runtime.settings.order_payment_max_attempts
    _stick_processing(runtime, shop, bad, attempt=max_attempts)
    with runtime.db.unit_of_work() as uow:
        uow.session.execute(
            update(Product).where(Product.sku == "FULL").values(stock=STOCK_CEILING)
        )

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="opsline.orders.sweep"):
        swept = _sweep(runtime)

    assert swept == (2, 1)
    assert order_row(runtime, requeued).payment_attempt == 1
    assert order_row(runtime, exhausted).status == "FAILED"
    assert shop.stock(good["id"]) == 10 - 1
    # The bad order's unit was rolled back whole, and its failure logged by id.
    assert order_row(runtime, bad).status == "PROCESSING"
    assert shop.stock(full["id"]) == STOCK_CEILING
    assert _events(runtime, "orders.order_failed") == 1
    logged = [r.msg for r in caplog.records if r.name == "opsline.orders.sweep"]
    assert [(e["event"], e.get("order_id")) for e in logged] == [
        ("orders_sweep_order_failed", bad),
        ("orders_swept", None),
    ]
    assert (logged[1]["resolved"], logged[1]["failed"]) == (2, 1)
    # Once the data allows it, the next sweep resolves it.
    with runtime.db.unit_of_work() as uow:
        uow.session.execute(update(Product).where(Product.sku == "FULL").values(stock=8))
    again = _sweep(runtime)
    assert again == (1, 0)
    assert order_row(runtime, bad).status == "FAILED"
    assert shop.stock(full["id"]) == 10
    assert _events(runtime, "orders.order_failed") == 2


def test_a_backlog_of_orders_still_waiting_for_payment_does_not_hide_an_abandoned_one(
    shop: Shop, runtime: Runtime
) -> None:
    product = shop.product(stock=1000)
    ctx = Context(runtime.db, runtime.settings, Principal(shop.owner.tenant_id, Role.OWNER))
    one = OrderIn.model_validate({"items": [{"product_id": product["id"], "quantity": 1}]})
    # More orders than a sweep takes at once, all idle, their payment jobs still queued.
    waiting = [place_order(ctx, one, idempotency_key=None).body["id"] for _ in range(_BATCH + 20)]
    abandoned = shop.order([(product["id"], 1)]).json()["id"]
    _cancel_payment(runtime, abandoned)
    _age(runtime, abandoned, *waiting)

    assert _sweep(runtime) == (1, 0)
    assert _jobs_of(runtime, abandoned) == [(1, "cancelled"), (2, "available")]
    assert {order_row(runtime, o).payment_attempt for o in waiting[:: _BATCH // 5]} == {0}
