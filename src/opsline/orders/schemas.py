"""Request and response shapes of products and orders."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
)

from opsline.orders._state import OrderStatus
from opsline.orders.models import CENT, MAX_MONEY
from opsline.platform.http.inputs import FreeText, OneLine

MAX_QUANTITY = 10_000
MAX_LINES = 100
# The most units a product may hold through creation and stock adjustments:
# stock is an INTEGER column. Units given back by cancelled or failed orders may
# carry it above this, up to the column's STOCK_CEILING.
MAX_STOCK = 1_000_000_000

# Money goes over the wire as a string with two places: never a float.
MoneyOut = Annotated[Decimal, PlainSerializer(lambda d: f"{d:.2f}", return_type=str)]


def _two_places(amount: Decimal) -> Decimal:
    """Written with an exponent ("1E+2", "0E-1000000"), a valid amount would reach
    the database as written, which PostgreSQL refuses ("value overflows numeric
    format"); "-0" would come back as "-0.00"."""
    return amount.quantize(CENT) + 0


# An amount in: at most two places once normalised, kept with exactly two.
MoneyIn = Annotated[
    Decimal,
    Field(ge=0, le=MAX_MONEY, max_digits=14, decimal_places=2),
    AfterValidator(_two_places),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ProductIn(Strict):
    sku: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    name: OneLine = Field(min_length=1, max_length=200)
    price: MoneyIn
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    stock: int = Field(default=0, ge=0, le=MAX_STOCK)


class ProductPatch(Strict):
    name: OneLine | None = Field(default=None, min_length=1, max_length=200)
    price: MoneyIn | None = None
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")


class StockAdjustmentIn(Strict):
    delta: int = Field(
        ge=-MAX_STOCK,
        le=MAX_STOCK,
        description=f"Units to add (negative to remove); stock stays within 0..{MAX_STOCK}",
    )
    reason: FreeText = Field(min_length=1, max_length=200)

    @field_validator("delta")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("delta must not be zero")
        return value


class ProductOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    sku: str
    name: str
    price: MoneyOut
    currency: str
    stock: int
    archived_at: datetime | None
    created_at: datetime
    updated_at: datetime


class OrderItemIn(Strict):
    product_id: uuid.UUID
    quantity: int = Field(ge=1, le=MAX_QUANTITY)


class OrderIn(Strict):
    items: list[OrderItemIn] = Field(min_length=1, max_length=MAX_LINES)


class OrderLineOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    product_id: uuid.UUID
    sku: str
    name: str
    unit_price: MoneyOut
    quantity: int
    line_total: MoneyOut


class OrderOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    status: OrderStatus
    total: MoneyOut
    currency: str
    created_by: str
    user_id: uuid.UUID | None
    payment_attempt: int
    payment_reference: str | None
    failure_reason: str | None
    created_at: datetime
    updated_at: datetime
    paid_at: datetime | None
    cancelled_at: datetime | None
    lines: list[OrderLineOut] = []


class CancelIn(Strict):
    reason: FreeText | None = Field(default=None, max_length=200)


class StatusChangeOut(BaseModel):
    seq: int
    order_id: uuid.UUID
    status: OrderStatus
    total: MoneyOut
    currency: str
    at: datetime
