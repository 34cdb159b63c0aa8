"""Selection: a client's ``where`` conditions and ids as a tenant-scoped SQL clause.

Every name is checked against the resource's declaration; an unknown field or
operator, or a value of the wrong type (or an integer beyond its column), is a 422
naming what is allowed. ``contains`` and ``starts_with`` ignore case.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, and_, false

from opsline.bulk._storable import check_storable, storable_range
from opsline.bulk.errors import InvalidBulkRequest
from opsline.platform.http.inputs import check_one_line
from opsline.platform.resources import Field, Resource

OPS = (
    "eq",
    "ne",
    "lt",
    "lte",
    "gt",
    "gte",
    "in",
    "not_in",
    "between",
    "is_null",
    "not_null",
    "contains",
    "starts_with",
)
MAX_IN = 1000


def _invalid(loc: list[Any], message: str) -> InvalidBulkRequest:
    return InvalidBulkRequest(message, errors=[{"loc": loc, "msg": message}])


def filter_field(resource: Resource, name: str, index: int) -> Field:
    field = resource.field(name)
    if field is None or not field.filterable:
        allowed = ", ".join(f.name for f in resource.fields if f.filterable)
        raise _invalid(
            ["body", "where", index, "field"],
            f"unknown field {name!r} for {resource.name}; filterable fields: {allowed}",
        )
    return field


def condition(resource: Resource, cond: dict[str, Any], index: int) -> ColumnElement[bool]:
    """One ``{field, op, value}`` as SQL; raises InvalidBulkRequest (422)."""
    field = filter_field(resource, str(cond.get("field")), index)
    op = cond.get("op")
    if op not in OPS:
        raise _invalid(
            ["body", "where", index, "op"], f"unknown operator {op!r}; use one of {', '.join(OPS)}"
        )
    column = resource.table.c[field.column_name]
    try:
        return _clause(field, column, str(op), cond.get("value"))
    except ValueError as exc:
        raise _invalid(["body", "where", index, "value"], str(exc)) from None


def _coerce(field: Field, column: Any, value: Any) -> Any:
    """The value as the field's type. An integer must fit the column's type; a
    decimal beyond the column's range is compared as the nearest value just
    beyond it, which every stored value relates to the same way (and PostgreSQL
    cannot even parse a numeric past its own limits, such as 1e200000)."""
    coerced = field.coerce(value)
    if field.kind == "int":
        check_storable(column, field.name, coerced)
    elif isinstance(coerced, Decimal) and (bounds := storable_range(column)) is not None:
        beyond = bounds[1] + 1
        coerced = max(-beyond, min(beyond, coerced))
    return coerced


def _clause(field: Field, column: Any, op: str, value: Any) -> ColumnElement[bool]:
    if op == "is_null":
        return column.is_(None)  # type: ignore[no-any-return]
    if op == "not_null":
        return column.is_not(None)  # type: ignore[no-any-return]
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value or len(value) > MAX_IN:
            raise ValueError(f"{op} needs a list of 1 to {MAX_IN} values")
        values = [_coerce(field, column, v) for v in value]
        return column.in_(values) if op == "in" else column.not_in(values)  # type: ignore[no-any-return]
    if op == "between":
        if not isinstance(value, list) or len(value) != 2:
            raise ValueError("between needs a list of two values [low, high]")
        low, high = _coerce(field, column, value[0]), _coerce(field, column, value[1])
        return column.between(low, high)  # type: ignore[no-any-return]
    if op in ("contains", "starts_with"):
        if field.kind not in ("str", "enum") or not isinstance(value, str):
            raise ValueError(f"{op} works on text fields with a text value")
        check_one_line(value)  # ValueError: a 422 naming the condition's value
        escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{escaped}%" if op == "contains" else f"{escaped}%"
        # Case-insensitive on both databases (SQLite's LIKE already is, for ASCII
        # letters; PostgreSQL's is not): ILIKE there, lower() on both sides here.
        return column.ilike(pattern, escape="\\")  # type: ignore[no-any-return]
    coerced = _coerce(field, column, value)
    return {  # type: ignore[no-any-return]
        "eq": lambda: column == coerced,
        "ne": lambda: column != coerced,
        "lt": lambda: column < coerced,
        "lte": lambda: column <= coerced,
        "gt": lambda: column > coerced,
        "gte": lambda: column >= coerced,
    }[op]()


def selection_clause(
    resource: Resource,
    tenant_id: uuid.UUID,
    where: Sequence[dict[str, Any]],
    ids: Sequence[uuid.UUID] | None,
) -> ColumnElement[bool]:
    """Tenant AND every condition AND (id in ids, when given)."""
    table = resource.table
    parts: list[ColumnElement[bool]] = [table.c.tenant_id == tenant_id]
    parts += [condition(resource, dict(c), i) for i, c in enumerate(where)]
    if ids is not None:
        parts.append(table.c.id.in_(list(ids)) if ids else false())
    return and_(*parts)
