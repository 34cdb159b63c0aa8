"""What an action does to a record, as SQL: new-value expressions, per-record checks.

A :class:`Plan` is built (and every parameter validated, 422 on error) before
anything runs; the chunk job applies it set-based. ``checks`` are predicates
that mark a record failed with a reason instead of changing it (an adjusted
price that would go negative or beyond what its column holds, a hard delete of
a record not soft-deleted).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import ColumnElement, Integer, Numeric, cast, func, literal, or_, type_coerce

from opsline.bulk._storable import check_storable, unstorable
from opsline.bulk.errors import InvalidBulkRequest
from opsline.platform.resources import Field, Resource

Mode = Literal["update", "delete", "none"]
ADJUST = re.compile(r"^\s*([+-])\s*(\d{1,12}(?:\.\d{1,6})?)\s*(%?)\s*$")


@dataclass
class Plan:
    resource: Resource
    action: str
    mode: Mode
    changes: dict[str, ColumnElement[Any]] = field(default_factory=dict)
    checks: list[tuple[ColumnElement[bool], str]] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    shown: dict[str, ColumnElement[Any]] = field(default_factory=dict)
    """New values as a preview shows them, for columns whose ``changes`` could not be
    computed for every record (an adjusted number beyond what the column holds)."""

    @property
    def undoable(self) -> bool:
        return self.mode != "none" and self.resource.is_undoable(self.action)

    def snapshot_columns(self) -> list[str]:
        """Exactly the columns that change (with ``id``); every column for deletes."""
        if self.mode == "delete":
            return [c.name for c in self.resource.table.columns]
        return ["id", *self.changes]


def _invalid(message: str, *loc: str | int) -> InvalidBulkRequest:
    return InvalidBulkRequest(message, errors=[{"loc": ["body", *loc], "msg": message}])


def build_plan(resource: Resource, action: str, params: dict[str, Any], *, now: datetime) -> Plan:
    """Validate ``action`` and ``params`` for ``resource``; raise 422 saying what is allowed."""
    if action not in resource.actions():
        allowed = ", ".join(resource.actions())
        raise _invalid(f"unknown action {action!r} for {resource.name}; use one of {allowed}")
    custom = resource.custom(action)
    if custom is None and action != "update" and params:
        raise _invalid(f"{action} takes no params; remove {', '.join(sorted(params))}", "params")
    if custom is not None:
        try:
            changes = dict(custom.changes(resource.table, params))
        except ValueError as exc:
            raise _invalid(f"{action}: {exc}", "params") from None
        plan = Plan(resource, action, "update", changes, values=dict(params))
    elif action == "update":
        plan = _update_plan(resource, params)
    elif action == "export":
        return Plan(resource, action, "none")
    elif action == "hard_delete":
        plan = Plan(resource, action, "delete")
        if resource.hard_delete == "soft_deleted_only" and resource.deleted_column:
            column = resource.table.c[resource.deleted_column]
            plan.checks.append((column.is_(None), "not soft-deleted; soft delete it first"))
        return plan
    else:
        plan = _toggle_plan(resource, action, now)
    if resource.updated_column and plan.changes:
        plan.changes[resource.updated_column] = _at(resource, resource.updated_column, now)
    return plan


def _at(resource: Resource, column: str, now: datetime) -> ColumnElement[Any]:
    return literal(now, resource.table.c[column].type)


_TOGGLES = {
    "archive": ("archived_column", True, "already archived"),
    "unarchive": ("archived_column", False, "not archived"),
    "soft_delete": ("deleted_column", True, "already deleted"),
    "restore": ("deleted_column", False, "not deleted"),
}


def _toggle_plan(resource: Resource, action: str, now: datetime) -> Plan:
    attribute, stamp, reason = _TOGGLES[action]
    name: str = getattr(resource, attribute)
    column = resource.table.c[name]
    value = _at(resource, name, now) if stamp else literal(None, column.type)
    plan = Plan(resource, action, "update", {name: value})
    plan.checks.append((column.is_not(None) if stamp else column.is_(None), reason))
    return plan


def _update_plan(resource: Resource, params: dict[str, Any]) -> Plan:
    sets, adjusts = params.get("set") or {}, params.get("adjust") or {}
    if not isinstance(sets, dict) or not isinstance(adjusts, dict) or not (sets or adjusts):
        raise _invalid('update needs params {"set": {field: value}} and/or {"adjust": {...}}')
    unknown = set(params) - {"set", "adjust"}
    if unknown:
        raise _invalid(f"unknown params {sorted(unknown)}; update takes set and adjust", "params")
    plan = Plan(resource, "update", "update")
    for name, raw in sets.items():
        f = _changeable(resource, name, "settable", "set")
        try:
            value = f.coerce(raw)
            f.check(value)
            check_storable(resource.table.c[f.column_name], f.name, value)
        except ValueError as exc:
            raise _invalid(str(exc), "params", "set", name) from None
        plan.changes[f.column_name] = literal(value, resource.table.c[f.column_name].type)
        plan.values[f.name] = raw
    for name, raw in adjusts.items():
        if name in sets:
            raise _invalid(f"{name} is both set and adjusted", "params", "adjust", name)
        f = _changeable(resource, name, "adjustable", "adjust")
        column = resource.table.c[f.column_name]
        result = _adjusted(f, column, raw)
        plan.changes[f.column_name] = cast(result, Integer if f.kind == "int" else column.type)
        plan.shown[f.column_name] = type_coerce(result, column.type)
        wrong = or_(f.out_of_bounds(result), unstorable(column, result))
        plan.checks.append((wrong, f"{f.name} would be out of range"))
        plan.values[f.name] = raw
    return plan


def _changeable(resource: Resource, name: str, flag: str, verb: str) -> Field:
    f = resource.field(name)
    if f is None or not getattr(f, flag):
        allowed = ", ".join(x.name for x in resource.fields if getattr(x, flag))
        raise _invalid(
            f"field {name!r} of {resource.name} cannot be {verb}; allowed: {allowed or 'none'}",
            "params",
            verb,
            name,
        )
    return f


def _adjusted(f: Field, column: Any, raw: Any) -> ColumnElement[Any]:
    """The adjusted value, rounded to the field's scale, as an unbounded ``NUMERIC``.

    Unbounded so that checking a result too large for the column is a comparison,
    not an overflow error; the caller casts it to the column's type to store it.
    """
    match = ADJUST.match(str(raw)) if isinstance(raw, str | int | float) else None
    if match is None:
        raise _invalid(f'adjust {f.name} with "+5%", "-10%", "+2" or "-0.5"', "params", "adjust")
    sign, amount, percent = match.groups()
    number = Decimal(amount) * (-1 if sign == "-" else 1)
    exact = Numeric()
    if percent:
        factor = literal(1 + number / 100, exact)
        expr: ColumnElement[Any] = cast(column, exact) * factor
    else:
        expr = cast(column, exact) + literal(number, exact)
    if f.kind == "int":
        return func.round(expr, type_=exact)
    return func.round(expr, f.scale if f.scale is not None else 2, type_=exact)
