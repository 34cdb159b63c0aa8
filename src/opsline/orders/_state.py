"""The order state machine, declared once.

Every transition is one conditional ``UPDATE ... WHERE status = :expected``:
of two concurrent transitions from the same state exactly one wins, with no
read-then-write window. The loser learns the current state and gets a 409.
"""

from __future__ import annotations

import enum
import functools
import uuid
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Row,
    String,
    bindparam,
    cast,
    func,
    insert,
    select,
    true,
    update,
)

from opsline.db import UnitOfWork, utcnow, values_insert
from opsline.orders._live import channels, push_after_commit, pusher, status_message
from opsline.orders.errors import InvalidTransition
from opsline.orders.models import changes_table, orders_table
from opsline.platform.engine.changes import notified_in_statements
from opsline.platform.realtime.pubsub import PG_CHANNEL, spliced_payload


class OrderStatus(enum.StrEnum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    PAID = "PAID"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


S = OrderStatus
TRANSITIONS: frozenset[tuple[OrderStatus, OrderStatus]] = frozenset(
    {
        (S.PENDING, S.PROCESSING),
        (S.PROCESSING, S.PAID),
        (S.PROCESSING, S.FAILED),
        (S.PENDING, S.CANCELLED),
    }
)


def is_allowed(source: OrderStatus, target: OrderStatus) -> bool:
    return (source, target) in TRANSITIONS


# A status log entry's columns, and the order's columns they are taken from.
_LOGGED = {
    "tenant_id": "tenant_id",
    "user_id": "user_id",
    "order_id": "id",
    "status": "status",
    "total": "total",
    "currency": "currency",
    "at": "updated_at",
}


def record_status(uow: UnitOfWork, order: Any, status: OrderStatus) -> None:
    """Append to the status log and push the change to live subscribers after commit.

    ``order`` is anything with the order's columns as attributes (a row or a model).
    The entry is held back either way (no round trip of its own): with PostgreSQL's
    ``NOTIFY`` as the pub/sub the insert itself notifies, with the ``seq`` it
    assigns; with another the ``seq`` comes back with the statement that carries
    the insert, and the message goes out after commit.
    """
    row = {column: getattr(order, field) for column, field in _LOGGED.items()}
    row["status"] = status.value
    if not notified_in_statements(uow):
        push = pusher(uow, order, status.value)
        uow.execute_later(
            *values_insert(changes_table, [row], returning=("seq",)),
            returned=lambda inserted: push(inserted.seq),
        )
        return
    insert_row, params = values_insert(changes_table, [row])
    message = status_message(0, order, status.value)  # its seq comes from the insert
    parts = [spliced_payload(name, message, "seq") for name in channels(order)]
    fitting = [part for part in parts if part is not None]
    for i, (head, tail) in enumerate(fitting):
        params[f"n_head_{i}"], params[f"n_tail_{i}"] = head, tail
    uow.execute_later(_notifying(insert_row, len(fitting)), {**params, "n_channel": PG_CHANNEL})


@functools.cache
def _notifying(insert_row: Any, count: int) -> Any:
    """``insert_row`` into the status log, notifying ``count`` payloads with its ``seq``."""
    if count == 0:  # every message too large to notify (see notify_payloads)
        return insert_row
    seq = cast(changes_table.c.seq, String())
    return insert_row.returning(
        *(
            func.pg_notify(
                bindparam("n_channel", type_=String()),
                bindparam(f"n_head_{i}", type_=String())
                + seq
                + bindparam(f"n_tail_{i}", type_=String()),
            )
            for i in range(count)
        )
    )


# Column expressions a transition may set (module constants, so statements cache).
NEXT_PAYMENT_ATTEMPT = orders_table.c.payment_attempt + 1
_EXPRESSIONS: dict[str, ColumnElement[Any]] = {"payment_attempt": NEXT_PAYMENT_ATTEMPT}


@functools.cache
def _transition_statement(
    value_params: tuple[str, ...], expressions: tuple[str, ...], *, logged: bool
) -> Any:
    """The guarded UPDATE for one shape of values, built once per shape.

    ``logged`` (PostgreSQL): the UPDATE is a data-modifying CTE and the status
    log's row is inserted from what it returns, in the same statement: one
    round trip for the transition and its log entry, and the row comes back
    with the entry's ``seq``.
    """
    cols = orders_table.c
    names = ("v_status", "v_updated_at", *value_params)
    values: dict[str, Any] = {name.removeprefix("v_"): bindparam(name) for name in names}
    values.update({key: _EXPRESSIONS[key] for key in expressions})
    moved = (
        update(orders_table)
        .where(
            cols.id == bindparam("b_id"),
            cols.tenant_id == bindparam("b_tenant_id"),
            cols.status == bindparam("b_source"),
        )
        .values(**values)
        .returning(*orders_table.c)
    )
    if not logged:
        return moved
    row = moved.cte("moved")
    log = (
        insert(changes_table)
        .from_select(list(_LOGGED), select(*(row.c[field] for field in _LOGGED.values())))
        .returning(changes_table.c.seq)
        .cte("logged")
    )
    return select(row, log.c.seq).select_from(row.join(log, true()))


def transition(
    uow: UnitOfWork,
    *,
    tenant_id: uuid.UUID,
    order_id: uuid.UUID,
    source: OrderStatus,
    target: OrderStatus,
    **values: Any,
) -> Row[Any] | None:
    """Move an order from ``source`` to ``target``; None when it was not in ``source``.

    Also appends the change to the status log in the same transaction (on
    PostgreSQL in the same statement). ``values`` are further columns to set:
    plain values, or one of the expressions above.
    """
    if not is_allowed(source, target):
        raise InvalidTransition(f"an order cannot go from {source} to {target}")
    expressions = tuple(sorted(k for k, v in values.items() if isinstance(v, ColumnElement)))
    if any(values[k] is not _EXPRESSIONS.get(k) for k in expressions):
        raise ValueError(f"a transition sets columns to values or to {sorted(_EXPRESSIONS)}")
    params = {f"v_{k}": v for k, v in values.items() if k not in expressions}
    logged = uow.bind.dialect.name == "postgresql"  # SQLite has no UPDATE in WITH
    stmt = _transition_statement(tuple(sorted(params)), expressions, logged=logged)
    row: Row[Any] | None = uow.execute(
        stmt,
        {
            **params,
            "b_id": order_id,
            "b_tenant_id": tenant_id,
            "b_source": source.value,
            "v_status": target.value,
            "v_updated_at": utcnow(),
        },
    ).first()
    if row is None:
        return None
    if logged:
        push_after_commit(uow, row.seq, row, target.value)
    else:
        record_status(uow, row, target)
    return row
