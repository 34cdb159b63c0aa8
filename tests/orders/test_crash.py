"""kill -9 the worker while orders are PROCESSING: nothing stays stuck, stock is conserved."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from opsline.bootstrap import bootstrap
from opsline.orders import service
from opsline.orders.models import Order, PaymentAttempt, Product
from opsline.orders.schemas import OrderIn, ProductIn
from opsline.orders.sweep import sweep_stuck_orders
from opsline.platform.auth.roles import Role
from opsline.platform.context import Context, Principal
from opsline.settings import Settings
from tests.helpers import stop_group
from tests.orders.conftest import job_context

pytestmark = pytest.mark.slow


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {
        "payment_latency_min_ms": 3000,
        "payment_latency_max_ms": 4000,
        "payment_success_rate": 0.5,
        "order_processing_timeout_s": 5,
        "job_lease_seconds": 30,
    }


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "OPSLINE_VAR_DIR": str(settings.var_dir),
        "OPSLINE_SECRET_KEY": "x" * 40,
        "OPSLINE_PAYMENT_LATENCY_MIN_MS": str(settings.payment_latency_min_ms),
        "OPSLINE_PAYMENT_LATENCY_MAX_MS": str(settings.payment_latency_max_ms),
        "OPSLINE_PAYMENT_SUCCESS_RATE": str(settings.payment_success_rate),
        "OPSLINE_PAYMENT_SEED": settings.payment_seed,
        "OPSLINE_JOB_LEASE_SECONDS": str(settings.job_lease_seconds),
        "OPSLINE_LOG_FORMAT": "json",
        **extra,
    }
    if settings.database_url:
        env["OPSLINE_DATABASE_URL"] = settings.database_url
    return env


OPSLINE = str(Path(sys.executable).with_name("opsline"))


def _worker(settings: Settings, log: Path, **extra: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:
        return subprocess.Popen(
            [OPSLINE, "worker", "--queues", "high", "--concurrency", "12"],
            env=_env(settings, **extra),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _statuses(runtime: object) -> Counter[str]:
    with runtime.db.read() as session:  # type: ignore[attr-defined]
        return Counter(session.scalars(select(Order.status)))


def _wait(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_kill_9_mid_payment_then_the_sweeper_resolves_every_order(
    settings: Settings, tmp_path: Path
) -> None:
    runtime = bootstrap(settings, configure_logs=False)
    first = second = None
    try:
        from opsline.platform.auth.service import create_user
        from opsline.platform.auth.tokens import hash_password
        from opsline.platform.tenancy.service import create_tenant

        with runtime.db.unit_of_work() as uow:
            user = create_user(
                uow, email="crash@example.com", password_hash=hash_password("x" * 12)
            )
            tenant = create_tenant(uow, name="Crash", owner=user)
        ctx = Context(runtime.db, settings, Principal(tenant.id, Role.OWNER, user_id=user.id))
        product = service.create_product(ctx, ProductIn(sku="C", name="c", price="2.00", stock=20))
        for _ in range(10):
            service.place_order(
                ctx,
                OrderIn.model_validate({"items": [{"product_id": product.id, "quantity": 1}]}),
                idempotency_key=None,
            )
        first = _worker(settings, tmp_path / "first.log")
        _wait(lambda: _statuses(runtime)["PROCESSING"] == 10, 60)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()

        # A new worker; after the processing timeout the sweeper hands the stuck
        # orders a new payment attempt, which the new worker settles.
        second = _worker(
            settings,
            tmp_path / "second.log",
            OPSLINE_PAYMENT_LATENCY_MIN_MS="1",
            OPSLINE_PAYMENT_LATENCY_MAX_MS="5",
        )
        time.sleep(settings.order_processing_timeout_s + 0.5)
        job = job_context(runtime, None, name="sweep", queue="default", max_attempts=1)
        assert sweep_stuck_orders(job)["resolved"] == 10
        _wait(lambda: set(_statuses(runtime)) <= {"PAID", "FAILED"}, 60)
    finally:
        for process in (first, second):
            stop_group(process)
        statuses = _statuses(runtime)
        with runtime.db.read() as session:
            stock = session.scalar(select(Product.stock).where(Product.id == product.id))
            charges = session.execute(
                select(PaymentAttempt.order_id, PaymentAttempt.attempt, PaymentAttempt.outcome)
            ).all()
        runtime.close()
    assert sum(statuses.values()) == 10
    assert stock == 20 - statuses["PAID"]
    # Each order was charged once per attempt, and the retry was a second attempt.
    per_order = Counter(order_id for order_id, _, _ in charges)
    assert set(per_order.values()) == {2}
    assert all(attempt in (1, 2) for _, attempt, _ in charges)
