"""Roles and the permission registry.

Roles are ordered: each role has every permission of the roles below it.
Permissions are registered at import time by the platform and by each
capability, each with the lowest role that holds it, so a capability adds
its permissions without the platform knowing it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.StrEnum):
    VIEWER = "viewer"
    MEMBER = "member"
    MANAGER = "manager"
    ADMIN = "admin"
    OWNER = "owner"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def at_least(self, other: Role) -> bool:
        return self.rank >= other.rank


_RANK = {role: index for index, role in enumerate(Role)}


@dataclass(frozen=True, slots=True)
class Permission:
    name: str
    description: str
    min_role: Role


_PERMISSIONS: dict[str, Permission] = {}


def register_permission(name: str, description: str, *, min_role: Role) -> Permission:
    """Declare a permission; registering the same name twice must agree."""
    permission = Permission(name, description, min_role)
    existing = _PERMISSIONS.setdefault(name, permission)
    if existing != permission:
        raise ValueError(f"permission {name!r} registered twice with different roles")
    return permission


def get_permission(name: str) -> Permission:
    try:
        return _PERMISSIONS[name]
    except KeyError:
        raise KeyError(f"unknown permission {name!r}; register it first") from None


def all_permissions() -> list[Permission]:
    return sorted(_PERMISSIONS.values(), key=lambda p: (p.min_role.rank, p.name))


def permissions_of(role: Role) -> frozenset[str]:
    return frozenset(p.name for p in _PERMISSIONS.values() if role.at_least(p.min_role))


TENANT_READ = register_permission(
    "tenant.read", "See the tenant and its members", min_role=Role.VIEWER
)
TENANT_UPDATE = register_permission("tenant.update", "Rename the tenant", min_role=Role.OWNER)
MEMBERS_MANAGE = register_permission(
    "members.manage", "Invite members, change their roles, remove them", min_role=Role.ADMIN
)
APIKEYS_MANAGE = register_permission(
    "apikeys.manage", "Create, list and revoke API keys", min_role=Role.ADMIN
)
JOBS_ADMIN = register_permission(
    "jobs.admin",
    "Inspect, retry, cancel and flush jobs; read and replay events",
    min_role=Role.ADMIN,
)
