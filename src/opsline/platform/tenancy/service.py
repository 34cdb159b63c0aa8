"""Tenants and their members: sign-up's tenant, invitations, roles, removal.

Rules: only an owner may grant or take away the owner role, or remove an
owner; a tenant always keeps at least one owner. The owner rows are locked
(``FOR UPDATE`` on PostgreSQL, the write lock on SQLite) before counting, so two
concurrent demotions cannot leave a tenant ownerless.
"""

from __future__ import annotations

import re
import secrets
import uuid
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from opsline.db import Database, UnitOfWork, utcnow
from opsline.platform.auth import tokens
from opsline.platform.auth.models import ApiKey, AuthSession, User
from opsline.platform.auth.roles import Role
from opsline.platform.context import Context
from opsline.platform.http.pagination import MAX_LIMIT, Page, keyset_page
from opsline.platform.http.problems import Conflict, Forbidden, NotFound, Unauthorized
from opsline.platform.tenancy.models import Invitation, Membership, Tenant
from opsline.platform.tenancy.schemas import MemberOut


def _slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60] or "tenant"
    return f"{slug}-{secrets.token_hex(3)}"


def create_tenant(uow: UnitOfWork, *, name: str, owner: User) -> Tenant:
    tenant = Tenant(name=name.strip(), slug=_slugify(name))
    uow.session.add(tenant)
    uow.session.flush()
    uow.session.add(Membership(tenant_id=tenant.id, user_id=owner.id, role=Role.OWNER.value))
    uow.session.flush()
    return tenant


def is_member(session: Session, tenant_id: uuid.UUID, user_id: uuid.UUID) -> bool:
    stmt = select(Membership.id).where(
        Membership.tenant_id == tenant_id, Membership.user_id == user_id
    )
    return session.scalar(stmt) is not None


def get_tenant(db: Database, tenant_id: uuid.UUID) -> Tenant:
    with db.read() as session:
        tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound("tenant not found")
    return tenant


def rename_tenant(ctx: Context, *, name: str) -> Tenant:
    with ctx.db.unit_of_work() as uow:
        tenant = uow.session.get(Tenant, ctx.tenant_id)
        if tenant is None:
            raise NotFound("tenant not found")
        tenant.name = name
    return tenant


def list_tenants(db: Database) -> list[tuple[Tenant, int]]:
    with db.read() as session:
        counts = (
            select(Membership.tenant_id, func.count().label("n"))
            .group_by(Membership.tenant_id)
            .subquery()
        )
        rows = session.execute(
            select(Tenant, func.coalesce(counts.c.n, 0))
            .outerjoin(counts, counts.c.tenant_id == Tenant.id)
            .order_by(Tenant.created_at)
        ).all()
    return [(tenant, int(n)) for tenant, n in rows]


def memberships_of(db: Database, user_id: uuid.UUID) -> list[tuple[Tenant, Role]]:
    with db.read() as session:
        rows = session.execute(
            select(Tenant, Membership.role)
            .join(Membership, Membership.tenant_id == Tenant.id)
            .where(Membership.user_id == user_id)
            .order_by(Tenant.name)
        ).all()
    return [(tenant, Role(role)) for tenant, role in rows]


def list_members(
    db: Database, tenant_id: uuid.UUID, *, cursor: str | None = None, limit: int = MAX_LIMIT
) -> Page[MemberOut]:
    stmt = (
        select(User.id, User.email, Membership.role, Membership.created_at, Membership.id)
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.tenant_id == tenant_id)
    )
    with db.read() as session:
        rows, next_cursor = keyset_page(
            stmt,
            columns=[Membership.created_at, Membership.id],
            cursor=cursor,
            limit=limit,
            descending=False,
            fetch=lambda s: session.execute(s).all(),
            key=lambda r: (r[3], r[4]),
            kinds=[datetime, uuid.UUID],
        )
    items = [MemberOut(user_id=r[0], email=r[1], role=Role(r[2]), joined_at=r[3]) for r in rows]
    return Page(items=items, next_cursor=next_cursor)


def add_member(uow: UnitOfWork, *, tenant_id: uuid.UUID, user_id: uuid.UUID, role: Role) -> None:
    if is_member(uow.session, tenant_id, user_id):
        raise Conflict("that user is already a member of this tenant")
    uow.session.add(Membership(tenant_id=tenant_id, user_id=user_id, role=role.value))
    uow.session.flush()


def _check_grant(ctx: Context, role: Role) -> None:
    if role is Role.OWNER and ctx.principal.role is not Role.OWNER:
        raise Forbidden("only an owner can grant the owner role")


def invite(ctx: Context, *, email: str, role: Role) -> tuple[Invitation, str]:
    """Create an invitation; its token is returned once, only its digest is kept."""
    _check_grant(ctx, role)
    email = email.strip().lower()
    token = tokens.new_secret("oli_")
    with ctx.db.unit_of_work() as uow:
        existing = uow.session.scalar(
            select(Membership.id)
            .join(User, User.id == Membership.user_id)
            .where(Membership.tenant_id == ctx.tenant_id, User.email == email)
        )
        if existing is not None:
            raise Conflict(f"{email} is already a member of this tenant")
        invitation = Invitation(
            tenant_id=ctx.tenant_id,
            email=email,
            role=role.value,
            token_hash=tokens.digest(token),
            invited_by=ctx.principal.user_id,
            expires_at=utcnow() + timedelta(days=ctx.settings.invitation_days),
        )
        uow.session.add(invitation)
    return invitation, token


def list_invitations(ctx: Context, *, cursor: str | None, limit: int) -> Page[Invitation]:
    with ctx.db.read() as session:
        rows, next_cursor = keyset_page(
            select(Invitation).where(Invitation.tenant_id == ctx.tenant_id),
            columns=[Invitation.created_at, Invitation.id],
            cursor=cursor,
            limit=limit,
            fetch=lambda s: session.scalars(s).all(),
            key=lambda i: (i.created_at, i.id),
            kinds=[datetime, uuid.UUID],
        )
    return Page(items=rows, next_cursor=next_cursor)


def revoke_invitation(ctx: Context, *, invitation_id: uuid.UUID) -> None:
    with ctx.db.unit_of_work() as uow:
        invitation = uow.session.scalars(
            select(Invitation).where(
                Invitation.id == invitation_id, Invitation.tenant_id == ctx.tenant_id
            )
        ).first()
        if invitation is None:
            raise NotFound(f"invitation {invitation_id} not found")
        if invitation.accepted_at is None and invitation.revoked_at is None:
            invitation.revoked_at = utcnow()


def accept_invitation(db: Database, *, token: str, password: str) -> tuple[uuid.UUID, uuid.UUID]:
    """Join the inviting tenant; create the account or prove it with its password.

    Returns ``(user_id, tenant_id)``. The invitation is consumed exactly once. The
    password is hashed or verified between a first read and the transaction, which
    takes the invitation again: argon2's quarter of a second holds no write lock.
    """
    from opsline.platform.auth.service import create_user

    digest = tokens.digest(token)
    with db.read() as session:
        invitation = _valid_invitation(session, digest)
        user = session.scalars(select(User).where(User.email == invitation.email)).first()
    if user is None:
        password_hash = tokens.hash_password(password)
    elif not tokens.verify_password(user.password_hash, password):
        raise Unauthorized("that account exists; send its current password to join")
    with db.unit_of_work() as uow:
        invitation = _valid_invitation(uow.session, digest, lock=True)
        if user is None:
            user = create_user(uow, email=invitation.email, password_hash=password_hash)
        add_member(uow, tenant_id=invitation.tenant_id, user_id=user.id, role=Role(invitation.role))
        invitation.accepted_at = utcnow()
        return user.id, invitation.tenant_id


def invited_email(db: Database, token: str) -> str | None:
    """The address an invitation was sent to; None for an unknown token, which
    never gets as far as a password."""
    with db.read() as session:
        return session.scalar(
            select(Invitation.email).where(Invitation.token_hash == tokens.digest(token))
        )


def _valid_invitation(session: Session, digest: str, *, lock: bool = False) -> Invitation:
    invitation = session.scalars(
        select(Invitation).where(Invitation.token_hash == digest).with_for_update(of=Invitation)
        if lock
        else select(Invitation).where(Invitation.token_hash == digest)
    ).first()
    if (
        invitation is None
        or invitation.accepted_at is not None
        or invitation.revoked_at is not None
        or invitation.expires_at <= utcnow()
    ):
        raise Unauthorized("invitation not valid (unknown, used, revoked or expired)")
    return invitation


def _locked_membership(
    uow: UnitOfWork, tenant_id: uuid.UUID, user_id: uuid.UUID
) -> tuple[Membership, int]:
    """The member's row and how many other owners the tenant has, every one of those
    rows locked in one statement, in id order (as a bulk chunk locks its rows): two
    owners demoting or removing each other at once, or a bulk run, wait for each
    other instead of deadlocking."""
    rows = uow.session.scalars(
        select(Membership)
        .where(
            Membership.tenant_id == tenant_id,
            or_(Membership.user_id == user_id, Membership.role == Role.OWNER.value),
        )
        .order_by(Membership.id)
        .with_for_update()
    ).all()
    membership = next((row for row in rows if row.user_id == user_id), None)
    if membership is None:
        raise NotFound(f"user {user_id} is not a member of this tenant")
    others = sum(1 for row in rows if row.role == Role.OWNER.value and row.user_id != user_id)
    return membership, others


def change_role(ctx: Context, *, user_id: uuid.UUID, role: Role) -> MemberOut:
    _check_grant(ctx, role)
    with ctx.db.unit_of_work() as uow:
        membership, other_owners = _locked_membership(uow, ctx.tenant_id, user_id)
        current = Role(membership.role)
        if current is Role.OWNER and ctx.principal.role is not Role.OWNER:
            raise Forbidden("only an owner can change an owner's role")
        if current is Role.OWNER and role is not Role.OWNER:
            if other_owners == 0:
                raise Conflict("the last owner cannot be demoted; make another member owner first")
        membership.role = role.value
        withdraw_grants(uow.session, ctx.tenant_id, user_id, role)
        email = uow.session.scalar(select(User.email).where(User.id == user_id)) or ""
        return MemberOut(user_id=user_id, email=email, role=role, joined_at=membership.created_at)


def remove_member(ctx: Context, *, user_id: uuid.UUID) -> None:
    """Remove a member; their sessions in this tenant stop working at once, for good."""
    with ctx.db.unit_of_work() as uow:
        membership, other_owners = _locked_membership(uow, ctx.tenant_id, user_id)
        if membership.role == Role.OWNER.value:
            if ctx.principal.role is not Role.OWNER:
                raise Forbidden("only an owner can remove an owner")
            if other_owners == 0:
                raise Conflict("the last owner cannot be removed; make another member owner first")
        uow.session.delete(membership)
        withdraw_grants(uow.session, ctx.tenant_id, user_id, None)


def withdraw_grants(
    session: Session, tenant_id: uuid.UUID, user_id: uuid.UUID, role: Role | None
) -> None:
    """What a member handed out in a tenant follows them out of it (``role`` None) or
    down to their new role: the API keys they made are revoked, or capped at the new
    role (a key never exceeds its maker's role); their invitations not yet accepted
    are revoked, all of them or those above the new role. On removal their login
    sessions there are revoked, so that a later invitation does not bring them back.
    Run in the transaction that changes the membership (here, or a bulk chunk's)."""
    now = utcnow()
    above = [r.value for r in Role if role is None or r.rank > role.rank]
    keys = update(ApiKey).where(
        ApiKey.tenant_id == tenant_id,
        ApiKey.created_by == user_id,
        ApiKey.revoked_at.is_(None),
        ApiKey.role.in_(above),
    )
    session.execute(keys.values(revoked_at=now) if role is None else keys.values(role=role.value))
    session.execute(
        update(Invitation)
        .where(
            Invitation.tenant_id == tenant_id,
            Invitation.invited_by == user_id,
            Invitation.accepted_at.is_(None),
            Invitation.revoked_at.is_(None),
            Invitation.role.in_(above),
        )
        .values(revoked_at=now)
    )
    if role is None:
        session.execute(
            update(AuthSession)
            .where(
                AuthSession.tenant_id == tenant_id,
                AuthSession.user_id == user_id,
                AuthSession.revoked_at.is_(None),
            )
            .values(revoked_at=now, revoked_reason="membership_removed")
        )
