"""The state machine: the 4 allowed transitions succeed, the 21 other ordered pairs are refused."""

from __future__ import annotations

import itertools
import uuid
from decimal import Decimal

import pytest

from opsline.db import new_id, utcnow
from opsline.orders._state import TRANSITIONS, OrderStatus, is_allowed, transition
from opsline.orders.errors import InvalidTransition
from opsline.orders.models import Order
from opsline.platform.runtime import Runtime
from tests.helpers import signup

PAIRS = list(itertools.product(OrderStatus, repeat=2))


def test_exactly_four_transitions_are_declared() -> None:
    assert len(TRANSITIONS) == 4
    assert sum(is_allowed(a, b) for a, b in PAIRS) == 4
    assert len(PAIRS) - 4 == 21


def _order(runtime: Runtime, tenant_id: uuid.UUID, status: OrderStatus) -> uuid.UUID:
    with runtime.db.unit_of_work() as uow:
        order = Order(
            id=new_id(),
            tenant_id=tenant_id,
            created_by="system",
            status=status.value,
            total=Decimal("1.00"),
            currency="EUR",
            created_at=utcnow(),
            updated_at=utcnow(),
        )
        uow.session.add(order)
    return order.id


@pytest.mark.parametrize(("source", "target"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_transition(
    runtime: Runtime, app_client: object, source: OrderStatus, target: OrderStatus
) -> None:
    tenant_id = signup(app_client).tenant_id  # type: ignore[arg-type]
    order_id = _order(runtime, tenant_id, source)
    with runtime.db.unit_of_work() as uow:
        if is_allowed(source, target):
            moved = transition(
                uow, tenant_id=tenant_id, order_id=order_id, source=source, target=target
            )
            assert moved is not None and moved.status == target.value
        else:
            with pytest.raises(InvalidTransition):
                transition(
                    uow, tenant_id=tenant_id, order_id=order_id, source=source, target=target
                )


def test_transition_from_a_stale_state_changes_nothing(
    runtime: Runtime, app_client: object
) -> None:
    tenant_id = signup(app_client).tenant_id  # type: ignore[arg-type]
    order_id = _order(runtime, tenant_id, OrderStatus.CANCELLED)
    with runtime.db.unit_of_work() as uow:
        moved = transition(
            uow,
            tenant_id=tenant_id,
            order_id=order_id,
            source=OrderStatus.PENDING,
            target=OrderStatus.PROCESSING,
        )
    assert moved is None
    with runtime.db.read() as session:
        assert session.get(Order, order_id).status == "CANCELLED"  # type: ignore[union-attr]
