"""The sweeper of stuck orders: a periodic job that resolves orders whose payment
stalled (see :func:`sweep_stuck_orders`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Connection, bindparam, literal_column, select, update
from sqlalchemy.orm import Session

from opsline.db import UnitOfWork, utcnow
from opsline.orders._state import OrderStatus, transition
from opsline.orders.jobs import _mark_failed, capture_payment
from opsline.orders.models import Order, orders_table
from opsline.platform.engine.context import JobContext
from opsline.platform.engine.enqueue import JobSpec, build_rows
from opsline.platform.engine.models import PENDING_STATES, jobs_table
from opsline.platform.engine.registry import job
from opsline.platform.engine.scheduler import periodic

log = structlog.get_logger(__name__)

_O = orders_table.c
_J = jobs_table.c


@dataclass(frozen=True, slots=True)
class _Stuck:
    """An order as the sweep found it: every step taken on it is conditional on this."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    status: OrderStatus
    payment_attempt: int

    @classmethod
    def of(cls, row: Any) -> _Stuck:
        return cls(row.id, row.tenant_id, OrderStatus(row.status), row.payment_attempt)

    @property
    def attempt(self) -> int:
        """The attempt of its latest payment job: a PENDING order's job is to start
        the next one, a PROCESSING order's is the one under way."""
        return self.payment_attempt + (self.status is OrderStatus.PENDING)

    @property
    def payment_key(self) -> str:
        """The engine's unique key of its payment job for ``attempt``."""
        args = {"order_id": self.id, "attempt": self.attempt}
        [row] = build_rows([JobSpec(capture_payment, args, self.tenant_id)])
        return str(row["unique_key"])


_BATCH = 500
_COLUMNS = (_O.id, _O.tenant_id, _O.status, _O.payment_attempt)
# Status literals, so that the planner can use partial indexes (one on PROCESSING
# exists; PENDING orders are read in one pass, in chunks).
_STUCK_PROCESSING = (
    select(*_COLUMNS)
    .where(
        _O.status == literal_column(f"'{OrderStatus.PROCESSING.value}'"),
        _O.processing_started_at < bindparam("cutoff"),
    )
    .limit(_BATCH)
)
_IDLE_PENDING = select(*_COLUMNS).where(
    _O.status == literal_column(f"'{OrderStatus.PENDING.value}'"),
    _O.updated_at < bindparam("cutoff"),
)
_LIVE_KEYS = select(_J.unique_key).where(
    _J.unique_key.in_(bindparam("keys", expanding=True)),
    # The unique index's own condition, literally, so that it serves the look-up.
    _J.state.in_([literal_column(f"'{state}'") for state in PENDING_STATES]),
)
_GIVE_UP = {
    OrderStatus.PROCESSING: "payment did not complete in time",
    OrderStatus.PENDING: "payment never started: its job was dead or cancelled",
}


@periodic("* * * * *")
@job("orders.sweep_stuck_orders", queue="default", max_attempts=3)
def sweep_stuck_orders(ctx: JobContext) -> dict[str, int]:
    """Resolve orders stuck past ``order_processing_timeout_s``: PROCESSING since
    (their worker died, say), or PENDING since placed or last given a job
    (``updated_at``) while no payment job for their attempt is pending any more
    (it went dead, an operator cancelled it, or it was never written).

    An order with payment attempts left gets its payment job again, for its next
    attempt (unique per order and attempt), which charges under the order's one
    reference; one out of attempts is FAILED with its stock released (a charge
    that still comes through later is refunded). Each order is resolved in a unit
    of work of its own: one that raises is rolled back, logged and counted as
    ``failed``, and left to the next sweep; the others go on. Returns how many
    orders were ``resolved`` and how many ``failed``.
    """
    cutoff = utcnow() - timedelta(seconds=ctx.settings.order_processing_timeout_s)
    with ctx.db.read() as session:
        stuck = [_Stuck.of(row) for row in session.execute(_STUCK_PROCESSING, {"cutoff": cutoff})]
        stuck += _abandoned(session, cutoff)
    resolved = failed = 0
    for order in stuck:
        ctx.check_cancelled()
        try:
            with ctx.unit_of_work() as uow:
                if _resolve(uow, order, cutoff, ctx.settings.order_payment_max_attempts):
                    resolved += 1
        except Exception:
            failed += 1
            log.exception(
                "orders_sweep_order_failed",
                order_id=str(order.id),
                tenant_id=str(order.tenant_id),
                status=order.status.value,
            )
    if resolved or failed:
        log.info("orders_swept", resolved=resolved, failed=failed)
    return {"resolved": resolved, "failed": failed}


def _abandoned(session: Session, cutoff: datetime) -> list[_Stuck]:
    """Up to a batch of PENDING orders idle since ``cutoff`` whose payment job for
    their attempt is no longer pending. Orders whose job still waits (a backlog)
    are passed over, so they never crowd abandoned ones out of the batch."""
    found: list[_Stuck] = []
    result = session.execute(_IDLE_PENDING.execution_options(yield_per=_BATCH), {"cutoff": cutoff})
    with result:
        for chunk in result.partitions():
            orders = {order.payment_key: order for order in map(_Stuck.of, chunk)}
            live = _live_keys(session, list(orders))
            found += [order for key, order in orders.items() if key not in live]
            if len(found) >= _BATCH:
                break
    return found[:_BATCH]


def _live_keys(executor: Session | Connection, keys: list[str]) -> set[str]:
    return set(executor.execute(_LIVE_KEYS, {"keys": keys}).scalars())


def _resolve(uow: UnitOfWork, order: _Stuck, cutoff: datetime, max_attempts: int) -> bool:
    """Give one stuck order its next payment attempt, or fail it when out of
    attempts; False when it had moved on since the sweep saw it."""
    pending = order.status is OrderStatus.PENDING
    if pending and _live_keys(uow.connection, [order.payment_key]):
        return False  # its job was retried (by an operator) since the sweep looked
    if order.attempt < max_attempts:
        return _retry_payment(uow, order, cutoff)
    # Only a PROCESSING order can fail: a PENDING one goes through PROCESSING in
    # this same transaction (nobody sees it there) and fails as a stuck one does.
    if pending and _start_to_give_up(uow, order) is None:
        return False  # cancelled, or a worker took it, meanwhile
    return _mark_failed(uow, order.tenant_id, order.id, _GIVE_UP[order.status]) == "failed"


def _start_to_give_up(uow: UnitOfWork, order: _Stuck) -> Any:
    return transition(
        uow,
        tenant_id=order.tenant_id,
        order_id=order.id,
        source=OrderStatus.PENDING,
        target=OrderStatus.PROCESSING,
        processing_started_at=utcnow(),
    )


def _retry_payment(uow: UnitOfWork, order: _Stuck, cutoff: datetime) -> bool:
    # Conditional on the order still being as the sweep saw it (same status and
    # attempt, still idle): a sweep racing a worker, a late finish or another
    # sweep changes nothing.
    now = utcnow()
    processing = order.status is OrderStatus.PROCESSING
    clock = Order.processing_started_at if processing else Order.updated_at
    values: dict[str, Any] = {"payment_attempt": order.payment_attempt + 1, "updated_at": now}
    if processing:
        values["processing_started_at"] = now
    result = uow.session.execute(
        update(Order)
        .where(
            Order.id == order.id,
            Order.tenant_id == order.tenant_id,
            Order.status == order.status.value,
            Order.payment_attempt == order.payment_attempt,
            clock < cutoff,
        )
        .values(values)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    capture_payment.enqueue(
        uow, tenant_id=order.tenant_id, order_id=order.id, attempt=order.attempt + 1
    )
    return True
