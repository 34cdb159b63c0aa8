"""The registry of resources bulk actions may target.

A capability declares a :class:`Resource` at import time with
:func:`register_resource`: its table (tenant-scoped, UUID key ``id``), the
fields a client may filter on and change, its archive / soft-delete / updated
columns, the permission each action needs, an optional per-record policy and
custom actions. Clients never name a table or column outside this declaration.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import ColumnElement, Table

from opsline.platform.resources._fields import Field

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from opsline.platform.context import Principal

BUILTIN_ACTIONS = (
    "update",
    "archive",
    "unarchive",
    "soft_delete",
    "restore",
    "hard_delete",
    "export",
)
DESTRUCTIVE = frozenset({"soft_delete", "hard_delete"})
HardDelete = Literal["soft_deleted_only", "any", "never"]


@dataclass(frozen=True, slots=True)
class PolicyCheck:
    """What a per-record policy sees: runs inside the chunk's transaction."""

    session: Session
    principal: Principal
    action: str
    ids: Sequence[uuid.UUID]
    changes: Mapping[str, Any]


# Returns the refused records with the reason for each.
RecordPolicy = Callable[[PolicyCheck], Mapping[uuid.UUID, str]]
# Told of the records a chunk (or an undo) is about to change, in its transaction,
# after the policy; ``ids`` are those going ahead. For what must follow a change
# (a member's API keys follow their role): should a record still fail after it,
# refused by the database, the hook's work for it stays done, so it must be safe so.
RecordHook = Callable[[PolicyCheck], None]
Changes = Callable[[Table, Mapping[str, Any]], Mapping[str, ColumnElement[Any]]]


@dataclass(frozen=True, slots=True)
class CustomAction:
    """A capability's own set-based action: ``changes(table, params)`` gives the
    new value expression of each column it changes (all undone on undo)."""

    name: str
    permission: str
    changes: Changes
    description: str = ""
    destructive: bool = False
    undoable: bool = True


@dataclass(frozen=True)
class Resource:
    name: str
    table: Table
    fields: Sequence[Field]
    permissions: Mapping[str, str]
    label: str = ""
    archived_column: str | None = None
    deleted_column: str | None = None
    updated_column: str | None = None
    hard_delete: HardDelete = "soft_deleted_only"
    policy: RecordPolicy | None = None
    before_change: RecordHook | None = None
    custom_actions: Sequence[CustomAction] = ()
    _by_name: dict[str, Field] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for f in self.fields:
            if f.column_name not in self.table.c:
                raise ValueError(f"resource {self.name!r}: no column {f.column_name!r}")
            self._by_name[f.name] = f
        for needed in ("id", "tenant_id"):
            if needed not in self.table.c:
                raise ValueError(f"resource {self.name!r}: table needs a {needed!r} column")

    def field(self, name: str) -> Field | None:
        return self._by_name.get(name)

    def custom(self, name: str) -> CustomAction | None:
        return next((a for a in self.custom_actions if a.name == name), None)

    def actions(self) -> list[str]:
        """Every action this resource offers, built-in first."""
        offered = []
        for action in BUILTIN_ACTIONS:
            if action in ("archive", "unarchive") and not self.archived_column:
                continue
            if action in ("soft_delete", "restore") and not self.deleted_column:
                continue
            if action == "hard_delete" and not self.offers_hard_delete():
                continue
            if action == "update" and not any(f.settable or f.adjustable for f in self.fields):
                continue
            if self.permission_for(action) is None:
                continue
            offered.append(action)
        return offered + [a.name for a in self.custom_actions]

    def offers_hard_delete(self) -> bool:
        """``soft_deleted_only`` needs a soft-delete column to tell which records qualify."""
        if self.hard_delete == "soft_deleted_only":
            return self.deleted_column is not None
        return self.hard_delete == "any"

    def permission_for(self, action: str) -> str | None:
        custom = self.custom(action)
        if custom is not None:
            return custom.permission
        if action == "export":
            return self.permissions.get("export") or self.permissions.get("read")
        return self.permissions.get(action) or self.permissions.get("write")

    def is_destructive(self, action: str) -> bool:
        custom = self.custom(action)
        return custom.destructive if custom else action in DESTRUCTIVE

    def is_undoable(self, action: str) -> bool:
        custom = self.custom(action)
        return custom.undoable if custom else action != "export"


_RESOURCES: dict[str, Resource] = {}


def register_resource(resource: Resource) -> Resource:
    """Declare a resource; registering the same name twice must be the same table."""
    existing = _RESOURCES.get(resource.name)
    if existing is not None and existing.table is not resource.table:
        raise ValueError(f"resource {resource.name!r} is registered twice")
    _RESOURCES[resource.name] = resource
    return resource


def unregister_resource(name: str) -> None:
    """For tests that declare a resource of their own."""
    _RESOURCES.pop(name, None)


def find_resource(name: str) -> Resource | None:
    return _RESOURCES.get(name)


def all_resources() -> list[Resource]:
    return sorted(_RESOURCES.values(), key=lambda r: r.name)
