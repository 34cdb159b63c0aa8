"""A Hypothesis state machine over create / cancel / pay / fail / restock.

Invariant after every step, against the real database:
stock + units held by live orders (PENDING, PROCESSING, PAID) == units ever received.
"""

from __future__ import annotations

import uuid
from contextlib import ExitStack
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sqlalchemy import select

from opsline.bootstrap import bootstrap
from opsline.orders import service
from opsline.orders.errors import InsufficientStock, InvalidTransition
from opsline.orders.gateway import ChargeOutcome, ChargeResult
from opsline.orders.jobs import _finish, _start_processing
from opsline.orders.models import Order, OrderLine, Product
from opsline.orders.schemas import OrderIn, ProductIn
from opsline.platform.auth.roles import Role
from opsline.platform.context import Context, Principal
from tests._databases import TemplateDatabases, base_settings
from tests.orders.conftest import job_context

LIVE = ("PENDING", "PROCESSING", "PAID")


class Checkout(RuleBasedStateMachine):
    root: Path
    backend: str
    templates: TemplateDatabases
    server_url: str | None

    @initialize()
    def start(self) -> None:
        var = self.root / uuid.uuid4().hex
        self.database = ExitStack()  # a fresh, migrated database per example
        url = self.database.enter_context(self.templates.fresh(self.backend, var, self.server_url))
        self.settings = base_settings(var, database_url=url)
        self.runtime = bootstrap(self.settings, configure_logs=False)
        from opsline.platform.auth.service import create_user
        from opsline.platform.auth.tokens import hash_password
        from opsline.platform.tenancy.service import create_tenant

        with self.runtime.db.unit_of_work() as uow:
            user = create_user(
                uow,
                email=f"{uuid.uuid4().hex[:8]}@example.com",
                password_hash=hash_password("x" * 12),
            )
            tenant = create_tenant(uow, name="Prop", owner=user)
        self.ctx = Context(
            self.runtime.db, self.settings, Principal(tenant.id, Role.OWNER, user_id=user.id)
        )
        self.received: dict[uuid.UUID, int] = {}
        for index, stock in enumerate((3, 5)):
            product = service.create_product(
                self.ctx, ProductIn(sku=f"P{index}", name="p", price="1.50", stock=stock)
            )
            self.received[product.id] = stock
        self.orders: list[uuid.UUID] = []

    def teardown(self) -> None:
        if hasattr(self, "runtime"):
            self.runtime.close()
        if hasattr(self, "database"):
            self.database.close()

    @rule(a=st.integers(0, 3), b=st.integers(0, 3))
    def create(self, a: int, b: int) -> None:
        ids = list(self.received)
        items = [{"product_id": p, "quantity": q} for p, q in zip(ids, (a, b), strict=True) if q]
        if not items:
            return
        try:
            outcome = service.place_order(
                self.ctx, OrderIn.model_validate({"items": items}), idempotency_key=None
            )
        except InsufficientStock:
            return
        self.orders.append(uuid.UUID(outcome.body["id"]))

    @precondition(lambda self: bool(self.orders))
    @rule(index=st.integers(0, 50))
    def cancel(self, index: int) -> None:
        try:
            service.cancel_order(self.ctx, self.orders[index % len(self.orders)], reason=None)
        except InvalidTransition:
            pass

    @precondition(lambda self: bool(self.orders))
    @rule(index=st.integers(0, 50), approve=st.booleans())
    def pay(self, index: int, approve: bool) -> None:
        order_id = self.orders[index % len(self.orders)]
        job = job_context(self.runtime, self.ctx.tenant_id, name="t", max_attempts=1)
        claimed = _start_processing(job, self.ctx.tenant_id, order_id, wait=True)
        if claimed is None:
            return
        order, reference = claimed
        outcome = ChargeOutcome.SUCCEEDED if approve else ChargeOutcome.DECLINED
        result = ChargeResult(outcome, "prop")
        attempt = order.payment_attempt
        _finish(job, self.ctx.tenant_id, order_id, attempt, reference, result, wait=True)

    @rule(delta=st.integers(1, 4))
    def restock(self, delta: int) -> None:
        product_id = next(iter(self.received))
        service.adjust_stock(self.ctx, product_id, delta=delta, reason="prop")
        self.received[product_id] += delta

    @invariant()
    def stock_is_conserved(self) -> None:
        if not hasattr(self, "runtime"):
            return
        with self.runtime.db.read() as session:
            stock = dict(session.execute(select(Product.id, Product.stock)).all())
            held = session.execute(
                select(OrderLine.product_id, OrderLine.quantity)
                .join(Order, Order.id == OrderLine.order_id)
                .where(Order.status.in_(LIVE))
            ).all()
        totals = dict(stock)
        for product_id, quantity in held:
            totals[product_id] += quantity
        assert totals == self.received
        assert all(value >= 0 for value in stock.values())


@pytest.mark.slow
def test_checkout_state_machine(
    tmp_path: Path, backend: str, templates: TemplateDatabases, server_url: str | None
) -> None:
    Checkout.root, Checkout.backend, Checkout.templates = tmp_path, backend, templates
    Checkout.server_url = server_url
    runner = Checkout.TestCase()
    runner.settings = settings(
        max_examples=25,
        stateful_step_count=20,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    runner.runTest()
