"""Fields of a bulk-targetable resource: their type, what may be done with them,
and how a client's value is checked before it reaches SQL."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, false, or_

from opsline.platform.http.inputs import check_one_line

FieldKind = Literal["str", "int", "decimal", "bool", "datetime", "uuid", "enum"]
Value = str | int | Decimal | bool | datetime | uuid.UUID | None
# A signed 64-bit integer: what every supported database can bind and compare.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True, slots=True)
class Field:
    """One column a client may name.

    ``filterable``: may appear in ``where``. ``settable``: may be given a value by
    ``update``'s ``set``. ``adjustable``: numeric, may be changed by ``adjust``
    (``+5%``, ``-2``). ``minimum``/``maximum``/``choices``/``min_length``/``max_length``/
    ``pattern`` are checked for set values before a run starts, and min/max for
    adjusted results per record. ``pattern`` must match the whole value.
    """

    name: str
    kind: FieldKind
    filterable: bool = True
    settable: bool = False
    adjustable: bool = False
    nullable: bool = False
    minimum: Decimal | None = None
    maximum: Decimal | None = None
    choices: tuple[str, ...] = ()
    max_length: int | None = None
    min_length: int | None = None
    pattern: str | None = None
    scale: int | None = None
    column: str | None = None

    @property
    def column_name(self) -> str:
        return self.column or self.name

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.kind,
            "filterable": self.filterable,
            "settable": self.settable,
            "adjustable": self.adjustable,
            "nullable": self.nullable,
        }
        for key, value in (
            ("minimum", self.minimum),
            ("maximum", self.maximum),
            ("min_length", self.min_length),
            ("max_length", self.max_length),
            ("pattern", self.pattern),
        ):
            if value is not None:
                out[key] = str(value) if isinstance(value, Decimal) else value
        if self.choices:
            out["choices"] = list(self.choices)
        return out

    def coerce(self, value: object) -> Value:
        """The client's JSON value as this field's Python type; ValueError says why not."""
        if value is None:
            if not self.nullable:
                raise ValueError(f"{self.name} cannot be null")
            return None
        parsed = _PARSERS[self.kind](self, value)
        return parsed

    def check(self, value: Value) -> None:
        """Raise ValueError when a value to be stored breaks the field's rules."""
        if value is None:
            if not self.nullable:
                raise ValueError(f"{self.name} cannot be null")
            return
        if isinstance(value, int | Decimal) and not isinstance(value, bool):
            if self.minimum is not None and value < self.minimum:
                raise ValueError(f"{self.name} must be at least {self.minimum}")
            if self.maximum is not None and value > self.maximum:
                raise ValueError(f"{self.name} must be at most {self.maximum}")
        if isinstance(value, str):
            if self.min_length is not None and len(value) < self.min_length:
                raise ValueError(f"{self.name} needs at least {self.min_length} character(s)")
            if self.max_length is not None and len(value) > self.max_length:
                raise ValueError(f"{self.name} is longer than {self.max_length} characters")
            if self.pattern is not None and not re.fullmatch(self.pattern, value):
                raise ValueError(f"{self.name} must match {self.pattern}")
            if self.choices and value not in self.choices:
                raise ValueError(f"{self.name} must be one of {', '.join(self.choices)}")

    def out_of_bounds(self, expr: ColumnElement[Any]) -> ColumnElement[bool]:
        """SQL that is true where ``expr`` (a computed new value) breaks min/max."""
        parts = []
        if self.minimum is not None:
            parts.append(expr < self.minimum)
        if self.maximum is not None:
            parts.append(expr > self.maximum)
        if not self.nullable:
            parts.append(expr.is_(None))
        return or_(*parts) if parts else and_(false())


def _str(field: Field, value: object) -> Value:
    if not isinstance(value, str):
        raise ValueError(f"{field.name} must be a string")
    try:
        return check_one_line(value)
    except ValueError as exc:
        raise ValueError(f"{field.name} {exc}") from None


def _int(field: Field, value: object) -> Value:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{field.name} must be an integer")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{field.name} must be an integer") from None
    if not INT_MIN <= number <= INT_MAX:
        raise ValueError(f"{field.name} must be between {INT_MIN} and {INT_MAX}")
    return number


def _decimal(field: Field, value: object) -> Value:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError(f"{field.name} must be a decimal number")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{field.name} must be a decimal number") from None
    if not number.is_finite():
        raise ValueError(f"{field.name} must be a finite number")
    if field.scale is not None and number.as_tuple().exponent < -field.scale:  # type: ignore[operator]
        raise ValueError(f"{field.name} has at most {field.scale} decimal places")
    return number


def _bool(field: Field, value: object) -> Value:
    if not isinstance(value, bool):
        raise ValueError(f"{field.name} must be true or false")
    return value


def _datetime(field: Field, value: object) -> Value:
    if not isinstance(value, str):
        raise ValueError(f"{field.name} must be an ISO 8601 date-time")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{field.name} must be an ISO 8601 date-time") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{field.name} needs a time zone offset")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{field.name} is out of range") from None


def _uuid(field: Field, value: object) -> Value:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise ValueError(f"{field.name} must be a UUID") from None


def _enum(field: Field, value: object) -> Value:
    if not isinstance(value, str) or value not in field.choices:
        raise ValueError(f"{field.name} must be one of {', '.join(field.choices)}")
    return value


_PARSERS = {
    "str": _str,
    "int": _int,
    "decimal": _decimal,
    "bool": _bool,
    "datetime": _datetime,
    "uuid": _uuid,
    "enum": _enum,
}
