"""What a column's type can store, so an out-of-range number never reaches the database.

PostgreSQL refuses an integer or a numeric value its column type cannot hold
("integer out of range", "numeric field overflow"): in a filter that would be
a 500, and in an adjustment a chunk that fails on every retry instead of a
failed record with a reason. SQLite stores anything; the same limits apply to
it so that both databases answer alike.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Float,
    Integer,
    Numeric,
    SmallInteger,
    false,
    or_,
)

_INTEGERS = ((BigInteger, 63), (SmallInteger, 15), (Integer, 31))


def storable_range(column: Any) -> tuple[Decimal, Decimal] | None:
    """The lowest and highest number ``column`` holds; None when its type sets no limit."""
    kind = column.type
    for integer, bits in _INTEGERS:
        if isinstance(kind, integer):
            return Decimal(-(2**bits)), Decimal(2**bits - 1)
    if isinstance(kind, Numeric) and not isinstance(kind, Float) and kind.precision is not None:
        scale = kind.scale or 0
        top = Decimal(10) ** (kind.precision - scale) - Decimal(1).scaleb(-scale)
        return -top, top
    return None


def check_storable(column: Any, name: str, value: object) -> None:
    """Raise ValueError (saying the range) when the number ``value`` does not fit ``column``."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        return
    bounds = storable_range(column)
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        raise ValueError(f"{name} must be between {bounds[0]} and {bounds[1]}")


def unstorable(column: Any, expr: ColumnElement[Any]) -> ColumnElement[bool]:
    """SQL true where the computed ``expr`` would not fit ``column``."""
    bounds = storable_range(column)
    if bounds is None:
        return false()
    return or_(expr < bounds[0], expr > bounds[1])
