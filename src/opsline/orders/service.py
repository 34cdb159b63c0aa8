"""Use cases of products and orders. Each opens one unit of work and commits once.

Placing an order takes stock for all lines with conditional decrements, inserts
the order PENDING and enqueues its payment job in one transaction, so there is
never an order without its payment job, nor a job for an order rolled back.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from types import SimpleNamespace
from typing import Any, NamedTuple

from sqlalchemy import Select, Uuid, any_, bindparam, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from opsline.db import UnitOfWork, new_id, utcnow, values_insert
from opsline.orders import _stock
from opsline.orders._state import OrderStatus, record_status, transition
from opsline.orders.errors import (
    InvalidOrder,
    InvalidTransition,
    OrderNotFound,
    ProductNotFound,
    SkuTaken,
    StockAboveMaximum,
    StockWouldGoNegative,
)
from opsline.orders.events import OrderCancelled, OrderCreated, StockAdjusted
from opsline.orders.models import (
    CENT,
    MAX_MONEY,
    Order,
    OrderLine,
    Product,
    lines_table,
    orders_table,
    products_table,
)
from opsline.orders.permissions import ORDERS_CANCEL_ANY, ORDERS_READ_ALL
from opsline.orders.schemas import (
    MAX_STOCK,
    OrderIn,
    OrderLineOut,
    OrderOut,
    ProductIn,
    ProductPatch,
)
from opsline.platform.context import Context
from opsline.platform.engine.events import publish
from opsline.platform.http.deps import PendingContext, admit_with, with_session_role
from opsline.platform.http.pagination import Page, keyset_page
from opsline.platform.idempotency.service import Outcome, fingerprint, run_idempotent
from opsline.platform.last_seen import LastSeen, SeenChanged
from opsline.platform.locks import RedisLocks

# -- products ---------------------------------------------------------------------------


def create_product(ctx: Context, data: ProductIn) -> Product:
    product = Product(tenant_id=ctx.tenant_id, **data.model_dump())
    try:
        with ctx.db.unit_of_work() as uow:
            uow.session.add(product)
            uow.session.flush()
    except IntegrityError:
        raise SkuTaken(f"SKU {data.sku!r} is already used in this tenant") from None
    return product


def _product(session: Session, ctx: Context, product_id: uuid.UUID) -> Product:
    product: Product | None = session.scalars(
        select(Product).where(
            Product.id == product_id,
            Product.tenant_id == ctx.tenant_id,
            Product.deleted_at.is_(None),
        )
    ).first()
    if product is None:
        raise ProductNotFound(f"product {product_id} not found")
    return product


def get_product(ctx: Context, product_id: uuid.UUID) -> Product:
    with ctx.db.read() as session:
        return _product(session, ctx, product_id)


def list_products(
    ctx: Context,
    *,
    cursor: str | None,
    limit: int,
    include_archived: bool = False,
    sku: str | None = None,
) -> Page[Product]:
    stmt = select(Product).where(Product.tenant_id == ctx.tenant_id, Product.deleted_at.is_(None))
    if not include_archived:
        stmt = stmt.where(Product.archived_at.is_(None))
    if sku:
        stmt = stmt.where(Product.sku == sku)
    with ctx.db.read() as session:
        rows, next_cursor = keyset_page(
            stmt,
            columns=[Product.created_at, Product.id],
            cursor=cursor,
            limit=limit,
            fetch=lambda s: session.scalars(s).all(),
            key=lambda p: (p.created_at, p.id),
            kinds=[datetime, uuid.UUID],
        )
    return Page(items=rows, next_cursor=next_cursor)


def update_product(ctx: Context, product_id: uuid.UUID, patch: ProductPatch) -> Product:
    changes = patch.model_dump(exclude_unset=True, exclude_none=True)
    with ctx.db.unit_of_work() as uow:
        product = _product(uow.session, ctx, product_id)
        for field, value in changes.items():
            setattr(product, field, value)
        product.updated_at = utcnow()
    return product


def archive_product(ctx: Context, product_id: uuid.UUID) -> Product:
    with ctx.db.unit_of_work() as uow:
        product = _product(uow.session, ctx, product_id)
        if product.archived_at is None:
            product.archived_at = product.updated_at = utcnow()
    return product


def adjust_stock(ctx: Context, product_id: uuid.UUID, *, delta: int, reason: str) -> Product:
    """Add (or remove) units with a reason; publishes StockAdjusted.

    Stock never goes below zero, and an addition never takes it above
    MAX_STOCK: both are conditions of the one UPDATE, so concurrent
    adjustments cannot pass them (a refusal is a 409 with the stock then).
    """
    # Removing is allowed above the maximum (units given back by orders can carry
    # stock there), so only the bound that delta moves towards is checked.
    within = Product.stock + delta <= MAX_STOCK if delta > 0 else Product.stock + delta >= 0
    with ctx.db.unit_of_work() as uow:
        product = _product(uow.session, ctx, product_id)
        result = uow.session.execute(
            update(Product)
            .where(Product.id == product_id, Product.tenant_id == ctx.tenant_id, within)
            .values(stock=Product.stock + delta, updated_at=utcnow())
            .returning(Product.stock)
        )
        stock = result.scalar()
        if stock is None:
            uow.session.refresh(product)  # the stock that refused the adjustment
            raise _refused_adjustment(product, delta)
        uow.session.refresh(product)
        publish(
            uow,
            StockAdjusted(
                tenant_id=ctx.tenant_id,
                product_id=product_id,
                sku=product.sku,
                delta=delta,
                stock=stock,
                reason=reason,
            ),
        )
    return product


def _refused_adjustment(product: Product, delta: int) -> StockWouldGoNegative | StockAboveMaximum:
    if delta < 0:
        return StockWouldGoNegative(
            f"stock of {product.sku} is {product.stock}; cannot remove {-delta}",
            stock=product.stock,
        )
    return StockAboveMaximum(
        f"stock of {product.sku} is {product.stock}; adding {delta} would pass the maximum "
        f"of {MAX_STOCK} units (add at most {max(MAX_STOCK - product.stock, 0)})",
        stock=product.stock,
        maximum=MAX_STOCK,
    )


# -- orders -----------------------------------------------------------------------------


def merged_quantities(data: OrderIn) -> dict[uuid.UUID, int]:
    """Lines naming the same product are merged into one (quantities added)."""
    quantities: dict[uuid.UUID, int] = defaultdict(int)
    for item in data.items:
        quantities[item.product_id] += item.quantity
    return dict(quantities)


def place_order(
    who: Context | PendingContext, data: OrderIn, *, idempotency_key: str | None, wait: bool = True
) -> Outcome:
    """Create an order idempotently; see :class:`OrderPlacement`."""
    return OrderPlacement(who, data, idempotency_key=idempotency_key).attempt(wait)


class OrderPlacement:
    """One request's order; see opsline.platform.idempotency for the key rules.

    The products are read first, outside the transaction, and a pending
    request's session is checked by that same statement (401/403 before
    anything else). When this process has seen the session's role and every
    product before (``opsline.platform.last_seen``), the read is skipped: the
    order is priced from what was seen, and its statement checks that the
    session and each product are unchanged. If not (a price changed, a product
    archived or short, the session ended), nothing is written and the order is
    read and placed again as above, which gives the answer (the new price, a
    409 naming the shortage, a 401).

    :meth:`attempt` places the order; ``wait=False`` raises
    :class:`opsline.db.WriteLockBusy`, having written nothing, when another
    writer holds SQLite's write lock (see ``Database.unit_of_work``), and the
    caller attempts again later: the read is done once. With
    ``OPSLINE_ORDERS_REDIS_LOCK`` the products' Redis locks are held around the
    transaction (taken in sorted order); stock stays correct without them.
    """

    def __init__(
        self, who: Context | PendingContext, data: OrderIn, *, idempotency_key: str | None
    ) -> None:
        self.who, self.idempotency_key = who, idempotency_key
        self.quantities = merged_quantities(data)
        self.fingerprint = fingerprint("POST", "/api/v1/orders", data.model_dump(mode="json"))
        self._read: tuple[Context, Sequence[Any]] | None = None
        self._as_seen = False

    def attempt(self, wait: bool = True) -> Outcome:
        if self._read is None:
            self._read = self._last_seen() or self._fresh_read()
        try:
            return self._place(wait)
        except SeenChanged:
            # Nothing was written: read, and place as read.
            for product_id in self.quantities:
                _LAST_PRODUCTS.forget((self.who.tenant_id, product_id))
            self._read, self._as_seen = self._fresh_read(), False
            return self._place(wait)

    def _place(self, wait: bool) -> Outcome:
        assert self._read is not None
        ctx, found = self._read
        quantities = self.quantities
        check = self.who.session_check() if isinstance(self.who, PendingContext) else None
        as_seen = self._as_seen

        def run() -> Outcome:
            return run_idempotent(
                ctx,
                key=self.idempotency_key,
                request_fingerprint=self.fingerprint,
                status=201,
                action=lambda uow: _create_order(
                    uow, ctx, quantities, found, as_seen=as_seen, session_check=check
                ),
                wait=wait,
            )

        locks = _locks(ctx)
        if locks is None:
            return run()
        keys = [f"opsline:lock:{ctx.tenant_id}:product:{pid}" for pid in quantities]
        with locks.hold(keys):
            return run()

    def _fresh_read(self) -> tuple[Context, Sequence[Any]]:
        who = self.who
        ctx, found = admit_with(
            who, *_orderable_read(who.db.dialect, who.tenant_id, self.quantities)
        )
        for row in found:
            _LAST_PRODUCTS.put(
                (ctx.tenant_id, row.id), _Seen(row.id, row.sku, row.name, row.price, row.currency)
            )
        return ctx, found

    def _last_seen(self) -> tuple[Context, Sequence[Any]] | None:
        """The context and products without a statement, if all were seen before."""
        who = self.who
        found = [_LAST_PRODUCTS.get((who.tenant_id, pid)) for pid in self.quantities]
        if any(seen is None for seen in found):
            return None
        if isinstance(who, Context):
            ctx: Context | None = who
        elif who.claims is not None:
            ctx = who.assume()
        else:
            ctx = who.context()  # an API key's, checked already
        if ctx is None:
            return None
        self._as_seen = True
        return ctx, found


class _Seen(NamedTuple):
    """What an order is priced from: a product as last read."""

    id: uuid.UUID
    sku: str
    name: str
    price: Decimal
    currency: str


# (tenant, product) -> the product as last read by an order here.
_LAST_PRODUCTS: LastSeen[tuple[uuid.UUID, uuid.UUID], _Seen] = LastSeen(16384)


_LOCKS: dict[str, RedisLocks] = {}


def _locks(ctx: Context) -> RedisLocks | None:
    settings = ctx.settings
    if not settings.orders_redis_lock or not settings.redis_url:
        return None
    locks = _LOCKS.get(settings.redis_url)
    if locks is None:
        locks = _LOCKS[settings.redis_url] = RedisLocks(settings.redis_url)
    return locks


def _create_order(
    uow: UnitOfWork,
    ctx: Context,
    quantities: dict[uuid.UUID, int],
    found: Sequence[Any],
    *,
    as_seen: bool = False,
    session_check: tuple[Select[Any], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The order's rows, stock, status log, payment job and event; returns the response body.

    ``found``: the orderable products among ``quantities``' (read by place_order),
    or with ``as_seen`` as last seen (each decrement checks its product is
    unchanged). ``session_check``: a SELECT that must find the session live.
    Either check failing raises ``SeenChanged``, nothing written.
    Core statements only: this is the hottest write path of the system.
    """
    from opsline.orders.jobs import capture_payment

    now = utcnow()
    order_id = new_id()
    try:
        products = _orderable(quantities, found)
        lines = _lines(ctx, order_id, quantities, products)
        total = _total(lines)
    except InvalidOrder:
        if as_seen:
            # Judged on what was seen (a currency or a price since changed):
            # not an answer to store under the key; read afresh and judge that.
            raise SeenChanged from None
        raise
    if session_check is not None:
        uow.execute_later(*session_check, expect=1, otherwise=SeenChanged)
    order = {
        "id": order_id,
        "tenant_id": ctx.tenant_id,
        "created_by": ctx.principal.subject,
        "user_id": ctx.principal.user_id,
        "status": OrderStatus.PENDING.value,
        "total": total,
        "currency": next(iter(products.values())).currency,
        "payment_attempt": 0,
        "created_at": now,
        "updated_at": now,
    }
    # Held back (execute_later): on PostgreSQL the order and its lines travel
    # with the status log's insert, the payment job and the event with the
    # idempotency key's claim; two round trips for the five writes.
    uow.execute_later(*values_insert(orders_table, [order]))
    uow.execute_later(*values_insert(lines_table, lines))
    record_status(uow, SimpleNamespace(**order), OrderStatus.PENDING)
    capture_payment.enqueue_later(uow, tenant_id=ctx.tenant_id, order_id=order_id)
    publish(
        uow,
        OrderCreated(
            tenant_id=ctx.tenant_id,
            order_id=order_id,
            user_id=ctx.principal.user_id,
            total=order["total"],
            currency=order["currency"],
            lines=[{"product_id": str(x["product_id"]), "quantity": x["quantity"]} for x in lines],
        ),
    )
    # Stock last, after the idempotency key too: on PostgreSQL the hot product
    # rows stay locked only for the decrements and the commit. A shortage
    # rolls everything back.
    seen = products if as_seen else None
    uow.last(lambda: _stock.take(uow, ctx.tenant_id, quantities, now=now, as_seen=seen))
    return _order_body(order, lines)


def _lines(
    ctx: Context,
    order_id: uuid.UUID,
    quantities: dict[uuid.UUID, int],
    products: dict[uuid.UUID, Any],
) -> list[dict[str, Any]]:
    """The order's lines, priced from ``products``, in product-id order."""
    return [
        {
            "id": new_id(),
            "tenant_id": ctx.tenant_id,
            "order_id": order_id,
            "product_id": product.id,
            "sku": product.sku,
            "name": product.name,
            "unit_price": product.price,
            "quantity": quantities[product.id],
            "line_total": (product.price * quantities[product.id]).quantize(CENT, ROUND_HALF_UP),
        }
        for product in sorted(products.values(), key=lambda p: p.id)
    ]


def _total(lines: list[dict[str, Any]]) -> Decimal:
    """The order's total; InvalidOrder when it exceeds what the Money columns
    hold (a line's total is at most the order's). PostgreSQL would refuse the
    insert, SQLite store it: checked here, in Python, before anything is written."""
    total = sum((line["line_total"] for line in lines), Decimal(0))
    if total <= MAX_MONEY:
        return total
    detail = f"the order's total {total} exceeds {MAX_MONEY}, the largest amount an order holds"
    too_big = [
        f"{line['sku']} ({line['line_total']})" for line in lines if line["line_total"] > MAX_MONEY
    ]
    if too_big:
        detail += f" (so do these lines on their own: {', '.join(too_big)})"
    raise InvalidOrder(f"{detail}; order fewer units", total=str(total), maximum=str(MAX_MONEY))


def _order_body(order: dict[str, Any], lines: list[dict[str, Any]]) -> dict[str, Any]:
    out = OrderOut.model_validate(
        {
            **order,
            "payment_reference": None,
            "failure_reason": None,
            "paid_at": None,
            "cancelled_at": None,
            "lines": lines,
        }
    )
    return out.model_dump(mode="json")


_P = products_table.c
# Built once: a statement object reused keeps its compiled form and cache key.
# The live session's role comes back with each product (see admit_with).
_ORDERABLE_COLUMNS = with_session_role(
    select(_P.id, _P.sku, _P.name, _P.price, _P.currency).where(
        _P.tenant_id == bindparam("tenant_id"),
        _P.deleted_at.is_(None),
        _P.archived_at.is_(None),
    )
)
# PostgreSQL takes the ids as one array parameter; an expanding IN would be
# rewritten for each execution. SQLite has no arrays: one product (most orders)
# is an equality, more an expanding IN.
_ORDERABLE_BY_IDS = _ORDERABLE_COLUMNS.where(_P.id == any_(bindparam("ids", type_=ARRAY(Uuid()))))
_ORDERABLE_BY_ID = _ORDERABLE_COLUMNS.where(_P.id == bindparam("id"))
_ORDERABLE_IN = _ORDERABLE_COLUMNS.where(_P.id.in_(bindparam("ids", expanding=True)))


def _orderable_read(
    dialect: str, tenant_id: uuid.UUID, quantities: dict[uuid.UUID, int]
) -> tuple[Select[Any], dict[str, Any]]:
    ids = list(quantities)
    if dialect == "postgresql":
        return _ORDERABLE_BY_IDS, {"tenant_id": tenant_id, "ids": ids}
    if len(ids) == 1:
        return _ORDERABLE_BY_ID, {"tenant_id": tenant_id, "id": ids[0]}
    return _ORDERABLE_IN, {"tenant_id": tenant_id, "ids": ids}


def _orderable(quantities: dict[uuid.UUID, int], found: Sequence[Any]) -> dict[uuid.UUID, Any]:
    """The products by id; a refusal is the order's answer (stored under its key)."""
    products = {p.id: p for p in found}
    missing = [str(pid) for pid in quantities if pid not in products]
    if missing:
        raise InvalidOrder(
            f"unknown or archived products: {', '.join(missing)}", unknown_products=missing
        )
    currencies = {p.currency for p in products.values()}
    if len(currencies) > 1:
        raise InvalidOrder(
            f"an order must use one currency; these products mix {sorted(currencies)}"
        )
    return products


def _with_lines(session: Session, tenant_id: uuid.UUID, orders: Sequence[Any]) -> list[OrderOut]:
    """The orders with their lines (one statement for all of them), in order."""
    if not orders:
        return []
    lines: dict[uuid.UUID, list[OrderLineOut]] = defaultdict(list)
    for line in session.scalars(
        select(OrderLine)
        .where(
            OrderLine.tenant_id == tenant_id,
            OrderLine.order_id.in_([order.id for order in orders]),
        )
        .order_by(OrderLine.order_id, OrderLine.product_id)
    ):
        lines[line.order_id].append(OrderLineOut.model_validate(line))
    out = [OrderOut.model_validate(order) for order in orders]
    for each in out:
        each.lines = lines[each.id]
    return out


def _visible(ctx: Context, stmt: Any) -> Any:
    stmt = stmt.where(Order.tenant_id == ctx.tenant_id)
    if not ctx.principal.has(ORDERS_READ_ALL.name):
        stmt = stmt.where(Order.created_by == ctx.principal.subject)
    return stmt


def get_order(ctx: Context, order_id: uuid.UUID) -> OrderOut:
    """An order the caller may see; others' orders are 404 like missing ones."""
    with ctx.db.read() as session:
        order = session.scalars(_visible(ctx, select(Order).where(Order.id == order_id))).first()
        if order is None:
            raise OrderNotFound(f"order {order_id} not found")
        [out] = _with_lines(session, ctx.tenant_id, [order])
    return out


def list_orders(
    ctx: Context,
    *,
    cursor: str | None,
    limit: int,
    status: OrderStatus | None = None,
    created_by: str | None = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
) -> Page[OrderOut]:
    stmt = _visible(ctx, select(Order))
    if status is not None:
        stmt = stmt.where(Order.status == status.value)
    if created_by is not None:
        stmt = stmt.where(Order.created_by == created_by)
    if created_from is not None:
        stmt = stmt.where(Order.created_at >= created_from)
    if created_to is not None:
        stmt = stmt.where(Order.created_at < created_to)
    with ctx.db.read() as session:
        rows, next_cursor = keyset_page(
            stmt,
            columns=[Order.created_at, Order.id],
            cursor=cursor,
            limit=limit,
            fetch=lambda s: session.scalars(s).all(),
            key=lambda o: (o.created_at, o.id),
            kinds=[datetime, uuid.UUID],
        )
        items = _with_lines(session, ctx.tenant_id, rows)
    return Page(items=items, next_cursor=next_cursor)


def cancel_order(ctx: Context, order_id: uuid.UUID, *, reason: str | None) -> tuple[OrderOut, bool]:
    """PENDING -> CANCELLED with stock restored exactly once.

    Returns the order and whether this call changed it: cancelling a cancelled
    order changes nothing; any other state is a 409 naming it.
    """
    with ctx.db.unit_of_work() as uow:
        order = uow.session.scalars(
            _visible_for_cancel(ctx, select(Order).where(Order.id == order_id))
        ).first()
        if order is None:
            raise OrderNotFound(f"order {order_id} not found")
        if order.status == OrderStatus.CANCELLED.value:
            return _with_lines(uow.session, ctx.tenant_id, [order])[0], False
        cancelled = transition(
            uow,
            tenant_id=ctx.tenant_id,
            order_id=order_id,
            source=OrderStatus.PENDING,
            target=OrderStatus.CANCELLED,
            cancelled_at=utcnow(),
            failure_reason=reason,
        )
        if cancelled is None:
            # Moved since it was read (on PostgreSQL a concurrent cancel, say):
            # what it is now decides, as if it had been read now.
            uow.session.refresh(order)
            if order.status == OrderStatus.CANCELLED.value:
                return _with_lines(uow.session, ctx.tenant_id, [order])[0], False
            raise InvalidTransition(
                f"order is {order.status}; it cannot go to {OrderStatus.CANCELLED}",
                current_status=order.status,
            )
        # The winning transition is the only one that restores stock.
        _stock.give_back(uow.connection, ctx.tenant_id, order_id)
        publish(
            uow,
            OrderCancelled(
                tenant_id=ctx.tenant_id, order_id=order_id, user_id=order.user_id, reason=reason
            ),
        )
        return _with_lines(uow.session, ctx.tenant_id, [cancelled])[0], True


def _visible_for_cancel(ctx: Context, stmt: Any) -> Any:
    """The creator may cancel their order; managers any order of the tenant."""
    stmt = stmt.where(Order.tenant_id == ctx.tenant_id)
    if ctx.principal.has(ORDERS_CANCEL_ANY.name):
        return stmt
    return stmt.where(Order.created_by == ctx.principal.subject)
