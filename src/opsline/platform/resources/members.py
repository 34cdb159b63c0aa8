"""The platform's own bulk resource: tenant memberships (change role, remove).

The per-record policy keeps the last-owner rule: a run never demotes or
removes every owner of a tenant, and only an owner may make someone owner.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, cast

from sqlalchemy import Table, func, select

from opsline.platform.auth.roles import MEMBERS_MANAGE, TENANT_READ, Role
from opsline.platform.resources._fields import Field
from opsline.platform.resources._registry import PolicyCheck, Resource, register_resource
from opsline.platform.tenancy.models import Membership

ROLES = tuple(role.value for role in Role)
memberships = cast(Table, Membership.__table__)


def last_owner_policy(check: PolicyCheck) -> Mapping[uuid.UUID, str]:
    """Refuse changes that would leave the tenant without an owner."""
    refused: dict[uuid.UUID, str] = {}
    new_role: Any = check.changes.get("role")
    if new_role == Role.OWNER.value and check.principal.role != Role.OWNER:
        return dict.fromkeys(check.ids, "only an owner may make someone owner")
    demotes = check.action in ("hard_delete", "update") and new_role != Role.OWNER.value
    if not demotes:
        return refused
    m = memberships.c
    owners_in = [
        row.id
        for row in check.session.execute(
            select(m.id).where(
                m.tenant_id == check.principal.tenant_id,
                m.role == Role.OWNER.value,
                m.id.in_(check.ids),
            )
        )
    ]
    if not owners_in:
        return refused
    others = check.session.scalar(
        select(func.count())
        .select_from(memberships)
        .where(
            m.tenant_id == check.principal.tenant_id,
            m.role == Role.OWNER.value,
            m.id.not_in(check.ids),
        )
    )
    if not others:
        reason = "the last owner cannot be demoted or removed; make another member owner first"
        refused.update(dict.fromkeys(owners_in, reason))
    return refused


MEMBERS = register_resource(
    Resource(
        name="members",
        label="Tenant memberships",
        table=memberships,
        fields=(
            Field("id", "uuid"),
            Field("user_id", "uuid"),
            Field("role", "enum", settable=True, choices=ROLES),
            Field("created_at", "datetime"),
        ),
        permissions={"read": TENANT_READ.name, "write": MEMBERS_MANAGE.name},
        hard_delete="any",
        policy=last_owner_policy,
    )
)
