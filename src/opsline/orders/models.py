"""Products, orders, order lines, payment attempts and the order status log."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import cast

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Table,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from opsline.db import Base, new_id, utcnow

Money = Numeric(14, 2)
# The largest amount a Money column holds (12 digits before the point, 2 after).
MAX_MONEY = Decimal("999999999999.99")
# Amounts have two places: what each is rounded to.
CENT = Decimal("0.01")
# The largest stock the INTEGER column holds on every backend (SQLite's would
# take 64 bits; the CHECK makes it refuse what PostgreSQL cannot store).
STOCK_CEILING = 2**31 - 1
PROCESSING_ONLY = "status = 'PROCESSING'"
PENDING_ONLY = "status = 'PENDING'"


class Product(Base):
    __tablename__ = "products"
    __table_args__ = (
        UniqueConstraint("tenant_id", "sku"),
        CheckConstraint("stock >= 0", name="stock_not_negative"),
        CheckConstraint(f"stock <= {STOCK_CEILING}", name="stock_within_integer"),
        CheckConstraint("price >= 0", name="price_not_negative"),
        Index(None, "tenant_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    sku: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    price: Mapped[Decimal] = mapped_column(Money)
    currency: Mapped[str] = mapped_column(String(3))
    stock: Mapped[int] = mapped_column(Integer)
    archived_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (
        Index(None, "tenant_id", "created_at", "id"),
        Index(None, "tenant_id", "created_by", "created_at"),
        # Only orders in PROCESSING (the sweeper's look-up): placing an order and
        # settling it do not touch this index.
        Index(
            "ix_orders_processing",
            "processing_started_at",
            sqlite_where=text(PROCESSING_ONLY),
            postgresql_where=text(PROCESSING_ONLY),
        ),
        # Only orders in PENDING, for the sweeper's look-up of those whose payment
        # job died: an order's placement adds one entry, at the index's end.
        Index(
            "ix_orders_pending",
            "updated_at",
            sqlite_where=text(PENDING_ONLY),
            postgresql_where=text(PENDING_ONLY),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    created_by: Mapped[str] = mapped_column(String(80))
    user_id: Mapped[uuid.UUID | None]
    status: Mapped[str] = mapped_column(String(16))
    total: Mapped[Decimal] = mapped_column(Money)
    currency: Mapped[str] = mapped_column(String(3))
    payment_attempt: Mapped[int] = mapped_column(Integer, default=0)
    payment_reference: Mapped[str | None] = mapped_column(String(80))
    failure_reason: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    processing_started_at: Mapped[datetime | None]
    paid_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]


class OrderLine(Base):
    __tablename__ = "order_lines"
    # The unique constraint's index also serves look-ups by tenant (its prefix).
    __table_args__ = (UniqueConstraint("tenant_id", "order_id", "product_id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID]
    order_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"))
    product_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("products.id"))
    sku: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    unit_price: Mapped[Decimal] = mapped_column(Money)
    quantity: Mapped[int] = mapped_column(Integer)
    line_total: Mapped[Decimal] = mapped_column(Money)


class PaymentAttempt(Base):
    """One charge attempt per order attempt, all under the order's one reference (the
    gateway's idempotency key); ``outcome`` is succeeded, declined or refunded."""

    __tablename__ = "payment_attempts"
    __table_args__ = (UniqueConstraint("tenant_id", "order_id", "attempt"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(index=True)
    order_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    reference: Mapped[str] = mapped_column(String(80))
    outcome: Mapped[str | None] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class OrderStatusChange(Base):
    """Every status an order took, numbered, for live feeds and their resume."""

    __tablename__ = "order_status_changes"
    __table_args__ = (Index(None, "tenant_id", "user_id", "seq"), Index(None, "tenant_id", "seq"))

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    tenant_id: Mapped[uuid.UUID]
    user_id: Mapped[uuid.UUID | None]
    order_id: Mapped[uuid.UUID]
    status: Mapped[str] = mapped_column(String(16))
    total: Mapped[Decimal] = mapped_column(Money)
    currency: Mapped[str] = mapped_column(String(3))
    at: Mapped[datetime] = mapped_column(default=utcnow)


# Core tables for the hot paths (one statement each, no ORM unit of work).
products_table = cast(Table, Product.__table__)
orders_table = cast(Table, Order.__table__)
lines_table = cast(Table, OrderLine.__table__)
changes_table = cast(Table, OrderStatusChange.__table__)
attempts_table = cast(Table, PaymentAttempt.__table__)
