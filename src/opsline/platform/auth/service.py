"""Sign-up, login, token refresh and logout, and API keys.

Refresh tokens rotate on every use: using one marks it used and issues its
successor in the same session (family). Presenting a token that was already
used means it was stolen or replayed, so the whole session is revoked and
every token of the family stops working.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from opsline.db import Database, UnitOfWork, utcnow
from opsline.platform.auth import tokens
from opsline.platform.auth.errors import EmailTaken, InvalidCredentials, TenantChoiceRequired
from opsline.platform.auth.models import ApiKey, AuthSession, RefreshToken, User
from opsline.platform.auth.roles import Role
from opsline.platform.auth.schemas import TokenPair
from opsline.platform.context import Context
from opsline.platform.http.deps import API_KEY_PREFIX
from opsline.platform.http.pagination import Page, keyset_page
from opsline.platform.http.problems import Forbidden, NotFound, Unauthorized
from opsline.platform.runtime import Runtime
from opsline.platform.tenancy import service as tenancy
from opsline.platform.tenancy.models import Membership, Tenant


def normalize_email(email: str) -> str:
    return email.strip().lower()


def create_user(uow: UnitOfWork, *, email: str, password_hash: str) -> User:
    """The new account. Its password is hashed by the caller before the unit of work
    began (``tokens.hash_password``): argon2 takes a quarter of a second, which no
    transaction (on SQLite: the database's one write lock) may wait for."""
    email = normalize_email(email)
    if uow.session.scalar(select(User.id).where(User.email == email)) is not None:
        raise EmailTaken(f"an account with {email} exists; log in instead")
    user = User(email=email, password_hash=password_hash)
    uow.session.add(user)
    try:
        uow.session.flush()
    except IntegrityError:
        raise EmailTaken(f"an account with {email} exists; log in instead") from None
    return user


def signup(
    runtime: Runtime, *, email: str, password: str, tenant_name: str
) -> tuple[User, Tenant, TokenPair]:
    """Create a user, a tenant owned by them, and a first login session."""
    password_hash = tokens.hash_password(password)
    with runtime.db.unit_of_work() as uow:
        user = create_user(uow, email=email, password_hash=password_hash)
        tenant = tenancy.create_tenant(uow, name=tenant_name, owner=user)
        pair = _open_session(runtime, uow, user_id=user.id, tenant_id=tenant.id)
    return user, tenant, pair


def login(runtime: Runtime, *, email: str, password: str, tenant_id: uuid.UUID | None) -> TokenPair:
    email = normalize_email(email)
    with runtime.db.read() as session:
        user = session.scalars(select(User).where(User.email == email)).first()
        # Verify even for an unknown email so both cost the same time.
        valid = tokens.verify_password(user.password_hash if user else None, password)
        if user is None or not valid or not user.is_active:
            raise InvalidCredentials("email or password is wrong")
        memberships = _memberships(session, user.id)
    chosen = _choose_tenant(memberships, tenant_id)
    values: dict[str, object] = {"last_login_at": utcnow()}
    if tokens.password_needs_rehash(user.password_hash):
        values["password_hash"] = tokens.hash_password(password)  # before the transaction
    with runtime.db.unit_of_work() as uow:
        uow.session.execute(update(User).where(User.id == user.id).values(**values))
        return _open_session(runtime, uow, user_id=user.id, tenant_id=chosen)


def _memberships(session: Session, user_id: uuid.UUID) -> list[Membership]:
    return list(session.scalars(select(Membership).where(Membership.user_id == user_id)))


def _choose_tenant(memberships: Sequence[Membership], tenant_id: uuid.UUID | None) -> uuid.UUID:
    if not memberships:
        raise InvalidCredentials("this account belongs to no tenant any more")
    if tenant_id is not None:
        if any(m.tenant_id == tenant_id for m in memberships):
            return tenant_id
        raise InvalidCredentials("you are not a member of that tenant")
    if len(memberships) > 1:
        raise TenantChoiceRequired(
            "you belong to several tenants; send tenant_id with one of them",
            tenants=[str(m.tenant_id) for m in memberships],
        )
    return memberships[0].tenant_id


def _open_session(
    runtime: Runtime, uow: UnitOfWork, *, user_id: uuid.UUID, tenant_id: uuid.UUID
) -> TokenPair:
    auth_session = AuthSession(user_id=user_id, tenant_id=tenant_id)
    uow.session.add(auth_session)
    uow.session.flush()
    return _issue_pair(runtime, uow, auth_session)


def _issue_pair(runtime: Runtime, uow: UnitOfWork, auth_session: AuthSession) -> TokenPair:
    refresh = tokens.new_secret("olr_")
    uow.session.add(
        RefreshToken(
            session_id=auth_session.id,
            token_hash=tokens.digest(refresh),
            expires_at=utcnow() + timedelta(days=runtime.settings.refresh_token_days),
        )
    )
    access = runtime.tokens.issue(
        user_id=auth_session.user_id, tenant_id=auth_session.tenant_id, session_id=auth_session.id
    )
    return TokenPair(
        access_token=access,
        refresh_token=refresh,
        expires_in=int(runtime.tokens.lifetime.total_seconds()),
    )


def refresh(runtime: Runtime, *, refresh_token: str) -> TokenPair:
    """Rotate a refresh token; reuse of a used one revokes its whole session."""
    now = utcnow()
    with runtime.db.unit_of_work() as uow:
        row = uow.session.execute(
            select(RefreshToken, AuthSession)
            .join(AuthSession, AuthSession.id == RefreshToken.session_id)
            .where(RefreshToken.token_hash == tokens.digest(refresh_token))
        ).first()
        if row is None:
            raise Unauthorized("unknown refresh token; log in again")
        token, auth_session = row
        if auth_session.revoked_at is not None or token.expires_at <= now:
            raise Unauthorized("refresh token expired or revoked; log in again")
        # Conditional update: of two concurrent uses of one token, one wins.
        claimed = uow.session.execute(
            update(RefreshToken)
            .where(RefreshToken.id == token.id, RefreshToken.used_at.is_(None))
            .values(used_at=now)
        )
        if claimed.rowcount == 1:  # type: ignore[attr-defined]
            if not tenancy.is_member(uow.session, auth_session.tenant_id, auth_session.user_id):
                raise Unauthorized("membership revoked; log in again")
            return _issue_pair(runtime, uow, auth_session)
        # Reuse: commit the revocation, then refuse.
        _revoke_session(uow, auth_session.id, reason="refresh_token_reuse")
    raise Unauthorized("refresh token was already used; every session token is now revoked")


def _revoke_session(uow: UnitOfWork, session_id: uuid.UUID, *, reason: str) -> None:
    uow.session.execute(
        update(AuthSession)
        .where(AuthSession.id == session_id, AuthSession.revoked_at.is_(None))
        .values(revoked_at=utcnow(), revoked_reason=reason)
    )


def logout(ctx: Context) -> None:
    """End the caller's login session: its access and refresh tokens stop working."""
    if ctx.principal.session_id is None:
        raise Forbidden("API keys have no session to log out of; revoke the key instead")
    with ctx.db.unit_of_work() as uow:
        _revoke_session(uow, ctx.principal.session_id, reason="logout")


def get_user(db: Database, user_id: uuid.UUID) -> User:
    with db.read() as session:
        user = session.get(User, user_id)
    if user is None:
        raise NotFound("user not found")
    return user


# -- API keys -------------------------------------------------------------------------


def create_api_key(
    db: Database,
    *,
    tenant_id: uuid.UUID,
    name: str,
    role: Role,
    created_by: uuid.UUID | None,
) -> tuple[ApiKey, str]:
    """Create a key; the secret is returned once and only its digest is stored."""
    prefix = tokens.new_secret()[:12].replace("_", "x").replace("-", "y")
    secret = f"{API_KEY_PREFIX}{prefix}_{tokens.new_secret()}"
    with db.unit_of_work() as uow:
        if uow.session.get(Tenant, tenant_id) is None:
            raise NotFound(f"tenant {tenant_id} not found")
        key = ApiKey(
            tenant_id=tenant_id,
            name=name,
            prefix=prefix,
            key_hash=tokens.digest(secret),
            role=role.value,
            created_by=created_by,
        )
        uow.session.add(key)
    return key, secret


def create_api_key_for(ctx: Context, *, name: str, role: Role) -> tuple[ApiKey, str]:
    if not ctx.principal.role.at_least(role):
        raise Forbidden(
            f"you cannot create a key with a role above your own ({ctx.principal.role})"
        )
    return create_api_key(
        ctx.db, tenant_id=ctx.tenant_id, name=name, role=role, created_by=ctx.principal.user_id
    )


def list_api_keys(ctx: Context, *, cursor: str | None, limit: int) -> Page[ApiKey]:
    with ctx.db.read() as session:
        rows, next_cursor = keyset_page(
            select(ApiKey).where(ApiKey.tenant_id == ctx.tenant_id),
            columns=[ApiKey.created_at, ApiKey.id],
            cursor=cursor,
            limit=limit,
            fetch=lambda s: session.scalars(s).all(),
            key=lambda k: (k.created_at, k.id),
            kinds=[datetime, uuid.UUID],
        )
    return Page(items=rows, next_cursor=next_cursor)


def revoke_api_key(db: Database, *, key_id: uuid.UUID, tenant_id: uuid.UUID | None) -> ApiKey:
    """Revoke a key (idempotent). ``tenant_id`` scopes the lookup; None only from the CLI."""
    with db.unit_of_work() as uow:
        stmt = select(ApiKey).where(ApiKey.id == key_id)
        if tenant_id is not None:
            stmt = stmt.where(ApiKey.tenant_id == tenant_id)
        key = uow.session.scalars(stmt).first()
        if key is None:
            raise NotFound(f"API key {key_id} not found")
        if key.revoked_at is None:
            key.revoked_at = utcnow()
    return key
