"""The state machine: the 4 allowed transitions succeed, the 21 other ordered pairs are refused."""

from __future__ import annotations

import itertools
import uuid
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import event, select

from opsline.db import new_id, utcnow
from opsline.orders._state import TRANSITIONS, OrderStatus, is_allowed, transition
from opsline.orders.errors import InvalidTransition
from opsline.orders.models import Order, OrderStatusChange
from opsline.platform.runtime import Runtime
from tests.helpers import signup

S = OrderStatus
PAIRS = list(itertools.product(OrderStatus, repeat=2))
# Written out here, not taken from the code: the machine the issue specifies.
ALLOWED = {
    (S.PENDING, S.PROCESSING),
    (S.PROCESSING, S.PAID),
    (S.PROCESSING, S.FAILED),
    (S.PENDING, S.CANCELLED),
}


def test_exactly_the_four_specified_transitions_are_allowed() -> None:
    assert TRANSITIONS == ALLOWED
    assert {pair for pair in PAIRS if is_allowed(*pair)} == ALLOWED
    assert sum(not is_allowed(*pair) for pair in PAIRS) == 21  # 5 x 5 pairs less the 4


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
        if (source, target) in ALLOWED:
            moved = transition(
                uow, tenant_id=tenant_id, order_id=order_id, source=source, target=target
            )
            assert moved is not None and moved.status == target.value
        else:
            with pytest.raises(InvalidTransition):
                transition(
                    uow, tenant_id=tenant_id, order_id=order_id, source=source, target=target
                )
    with runtime.db.read() as session:
        order = session.get(Order, order_id)
    assert order is not None
    assert order.status == (target if (source, target) in ALLOWED else source).value


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


def _log(runtime: Runtime, order_id: uuid.UUID) -> list[tuple[int, str]]:
    with runtime.db.read() as session:
        rows = session.execute(
            select(OrderStatusChange.seq, OrderStatusChange.status)
            .where(OrderStatusChange.order_id == order_id)
            .order_by(OrderStatusChange.seq)
        )
        return [(seq, status) for seq, status in rows]


def test_a_transition_is_logged_once_and_only_when_it_happens(
    runtime: Runtime, app_client: object
) -> None:
    tenant_id = signup(app_client).tenant_id  # type: ignore[arg-type]
    order_id = _order(runtime, tenant_id, OrderStatus.PENDING)
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    moves = []
    for target in (OrderStatus.PROCESSING, OrderStatus.PROCESSING):  # the second is stale
        with runtime.db.unit_of_work() as uow:
            event.listen(runtime.db.engine, "before_cursor_execute", record)
            try:
                moves.append(
                    transition(
                        uow,
                        tenant_id=tenant_id,
                        order_id=order_id,
                        source=OrderStatus.PENDING,
                        target=target,
                    )
                )
            finally:
                event.remove(runtime.db.engine, "before_cursor_execute", record)
    first, stale = moves
    assert stale is None
    [(seq, status)] = _log(runtime, order_id)
    assert status == "PROCESSING"
    if runtime.db.dialect == "postgresql":
        assert first is not None and first.seq == seq  # the log's entry came back with the row
        assert len(statements) == 2  # one statement per transition: UPDATE and log together
