"""The platform's own bulk resource: tenant memberships (change role, remove).

The per-record policy holds every record to the members API's rules
(``opsline.platform.tenancy.service``): only an owner may change an owner's role,
remove an owner or make someone owner, and a tenant never loses its last owner.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import cast

from sqlalchemy import Table, func, select
from sqlalchemy.orm import Session

from opsline.platform.auth.roles import MEMBERS_MANAGE, TENANT_READ, Role
from opsline.platform.resources._fields import Field
from opsline.platform.resources._registry import PolicyCheck, Resource, register_resource
from opsline.platform.tenancy.models import Membership
from opsline.platform.tenancy.service import withdraw_grants

ROLES = tuple(role.value for role in Role)
memberships = cast(Table, Membership.__table__)
M = memberships.c
OWNER = Role.OWNER.value
ONLY_OWNER_GRANTS = "only an owner may make someone owner"
ONLY_OWNER_CHANGES = "only an owner may change or remove an owner"
LAST_OWNER = "the last owner cannot be demoted or removed; make another member owner first"
# First key of the advisory lock below: sets it apart from other users' (a two-key
# lock never collides with a one-key one). Two tenants sharing a hash only wait.
OWNERS_LOCK_CLASS = 0x4D42


def owner_policy(check: PolicyCheck) -> Mapping[uuid.UUID, str]:
    """Refuse what the members API would refuse, record by record.

    ``update`` gives the new values in ``changes`` (undo restores through here
    too, as an update to the restored values); ``hard_delete`` removes. Runs in
    the chunk's transaction; takes the locks of :func:`_lock_records` and
    :func:`_count_other_owners`, held until it ends. When a chunk would demote
    or remove every remaining owner, all of its owners are refused.
    """
    if check.action not in ("update", "hard_delete"):
        return {}
    by_owner = check.principal.role is Role.OWNER
    grants = check.action == "update" and check.changes.get("role") == OWNER
    if grants and not by_owner:
        return dict.fromkeys(check.ids, ONLY_OWNER_GRANTS)
    tenant_id = check.principal.tenant_id
    owners = _lock_records(check.session, tenant_id, check.ids)
    if not owners:
        return {}
    if not by_owner:
        return dict.fromkeys(owners, ONLY_OWNER_CHANGES)
    if not grants and _count_other_owners(check.session, tenant_id, owners) == 0:
        return dict.fromkeys(owners, LAST_OWNER)
    return {}


def _lock_records(
    session: Session, tenant_id: uuid.UUID, ids: Sequence[uuid.UUID]
) -> list[uuid.UUID]:
    """The owners among ``ids``, all of ``ids``' rows locked ``FOR UPDATE`` in id order.

    Their roles then hold until the transaction ends: the members API, which
    locks every owner's row, waits for this chunk or this chunk for it. A bulk
    chunk has locked its rows in this order already (``bulk._apply``), so this
    waits for nothing there.
    """
    rows = session.execute(
        select(M.id, M.role)
        .where(M.tenant_id == tenant_id, M.id.in_(ids))
        .order_by(M.id)
        .with_for_update()
    )
    return [row.id for row in rows if row.role == OWNER]


def _count_other_owners(session: Session, tenant_id: uuid.UUID, owners: Sequence[uuid.UUID]) -> int:
    """The tenant's owners not in ``owners``, counted under the tenant's owners lock.

    On PostgreSQL a transaction-scoped advisory lock per tenant serialises the
    chunks that demote or remove owners, and the count (a statement of its own,
    under READ COMMITTED) then sees every earlier one committed. Locking the
    other owners' rows instead would deadlock: each chunk already holds its own
    rows (:func:`_lock_records`), some of them owners another chunk would wait
    for while that one waits for it. On SQLite the chunk holds the write lock.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            select(func.pg_advisory_xact_lock(OWNERS_LOCK_CLASS, func.hashtext(str(tenant_id))))
        )
    others = session.scalar(
        select(func.count())
        .select_from(memberships)
        .where(M.tenant_id == tenant_id, M.role == OWNER, M.id.not_in(owners))
    )
    return int(others or 0)


def withdraw_members_grants(change: PolicyCheck) -> None:
    """A member removed or given a lower role by bulk loses what they handed out, as
    through the members API (``tenancy.service.withdraw_grants``)."""
    if change.action == "hard_delete":
        role: Role | None = None
    elif change.action == "update" and "role" in change.changes:
        role = Role(change.changes["role"])
    else:
        return
    users = change.session.scalars(
        select(M.user_id).where(M.tenant_id == change.principal.tenant_id, M.id.in_(change.ids))
    )
    for user_id in users:
        withdraw_grants(change.session, change.principal.tenant_id, user_id, role)


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
        policy=owner_policy,
        before_change=withdraw_members_grants,
    )
)
