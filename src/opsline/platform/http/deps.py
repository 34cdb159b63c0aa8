"""FastAPI dependencies: the runtime, the principal, permissions.

Every endpoint under ``/api/v1`` declares what it needs with
``ctx: Annotated[Context, RequirePermission("orders.write")]`` (or
``Authenticated`` for endpoints any signed-in principal may call). The
dependency authenticates the request, checks the permission (403 when the
principal's role lacks it), applies the per-principal rate limit, and hands
the endpoint a :class:`Context` bound to the principal's tenant.

The live-session lookup is a blocking read. Where requests' units run on the
event loop (``Settings.units_on_loop``) it runs there, the rate limit's Redis
commands awaited (see ``opsline.platform.http.db_work``): the hop to the thread
pool and back would cost more than the check. On SQLite an API key, whose use
may be written down (and so wait on the write lock), is checked in the pool.

A hot endpoint whose use case begins with a read of its own declares
``Annotated[PendingContext, PendingPermission("x")]`` instead: the token is
verified at once, and the session's check rides on that first read (one more
column of the same statement, see :func:`admit_with`) in the use case's own
hop to the loop, saving a statement and, on PostgreSQL, a hop.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Annotated, Any, cast

from fastapi import Depends, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy import Select, Table, bindparam, select, update
from starlette.concurrency import run_in_threadpool
from starlette.routing import BaseRoute

from opsline.db import Database, utcnow
from opsline.platform.auth.models import ApiKey, AuthSession, User
from opsline.platform.auth.roles import Role, get_permission
from opsline.platform.auth.tokens import AccessClaims, TokenError, digest
from opsline.platform.context import Context, Principal, RequestInfo
from opsline.platform.http.db_work import run_read
from opsline.platform.http.problems import Forbidden, Unauthorized
from opsline.platform.last_seen import LastSeen
from opsline.platform.runtime import Runtime
from opsline.platform.tenancy.models import Membership
from opsline.settings import Settings

API_KEY_PREFIX = "olk_"
LAST_USED_GRANULARITY = timedelta(minutes=1)

# The two ways to authenticate. Each authenticating dependency reads both headers
# itself (``_credentials``): as sub-dependencies of their own (FastAPI's HTTPBearer
# and APIKeyHeader) they cost every request their dependency solving. The
# endpoints that take one are documented with these schemes (``document_security``).
SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "AccessToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "Access token from /api/v1/auth/login",
    },
    "ApiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "A tenant API key",
    },
}
_AUTHENTICATES = "__opsline_authenticates__"  # set on the dependencies that do
_NO_CREDENTIALS = "send a bearer access token or an X-API-Key header"


def _credentials(request: Request) -> tuple[str | None, str | None]:
    """The request's bearer token and API key, each None when absent or empty."""
    headers = request.headers
    scheme, token = get_authorization_scheme_param(headers.get("authorization"))
    return (token or None) if scheme.lower() == "bearer" else None, headers.get("x-api-key") or None


def document_security(schema: dict[str, Any], routes: Sequence[BaseRoute]) -> None:
    """Add the security schemes to an OpenAPI ``schema``, and to each operation
    whose endpoint depends on an authenticating dependency."""
    schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    either: list[dict[str, list[str]]] = [{name: []} for name in SECURITY_SCHEMES]
    for route in routes:
        if not (isinstance(route, APIRoute) and route.include_in_schema):
            continue
        if not _authenticates(route.dependant):
            continue
        operations = schema["paths"].get(route.path_format, {})
        for method in route.methods:
            if method.lower() in operations:
                operations[method.lower()]["security"] = either


def _authenticates(dependant: Dependant) -> bool:
    return getattr(dependant.call, _AUTHENTICATES, False) or any(
        _authenticates(sub) for sub in dependant.dependencies
    )


async def get_runtime(request: Request) -> Runtime:
    # async: FastAPI would run a plain function in the thread pool (a hop per request).
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def client_ip(request: Request) -> str:
    """The client's address: the peer's, or what a trusted proxy forwarded for it
    (``OPSLINE_FORWARDED_ALLOW_IPS``, applied by the server before we see it)."""
    return request.client.host if request.client else "unknown"


def request_info(request: Request) -> RequestInfo:
    return RequestInfo(
        request_id=getattr(request.state, "request_id", ""),
        ip=client_ip(request) if request.client else None,
        user_agent=request.headers.get("user-agent"),
    )


def principal_from_credentials(
    runtime: Runtime,
    *,
    token: str | None,
    api_key: str | None,
    missing: str = "send an access token",
) -> Principal:
    """The principal of a bearer ``token``, else of an ``api_key``; 401 ``missing`` without either.

    For the dependencies below, and for endpoints outside the dependency system
    (WebSocket, SSE with a query token)."""
    if token:
        return _principal_from_token(runtime, token)
    if api_key:
        return _principal_from_api_key(runtime, api_key)
    raise Unauthorized(missing)


_memberships, _users, _sessions = (
    cast(Table, model.__table__) for model in (Membership, User, AuthSession)
)
_M, _U, _S = _memberships.c, _users.c, _sessions.c
# The role of a live login, checked on every request: a logout, a revoked
# session, a deactivated user or a removed membership takes effect at once.
_LIVE_ROLE = (
    select(_M.role)
    .join(_users, _U.id == _M.user_id)
    .join(_sessions, _S.user_id == _U.id)
    .where(
        _M.tenant_id == bindparam("session_tenant"),
        _M.user_id == bindparam("session_user"),
        _U.is_active.is_(True),
        _S.id == bindparam("session_id"),
        _S.tenant_id == bindparam("session_tenant"),
        _S.revoked_at.is_(None),
    )
)
_SESSION_ROLE = "session_role"
_SAME_ROLE = _LIVE_ROLE.where(_M.role == bindparam("session_role"))
# The role each session last had when checked, for PendingContext.assume.
_LAST_ROLES: LastSeen[uuid.UUID, str] = LastSeen(4096)


def _session_params(claims: AccessClaims | None) -> dict[str, uuid.UUID | None]:
    return {
        "session_tenant": claims.tenant_id if claims else None,
        "session_user": claims.user_id if claims else None,
        "session_id": claims.session_id if claims else None,
    }


def _verified(runtime: Runtime, token: str) -> AccessClaims:
    try:
        return runtime.tokens.verify(token)
    except TokenError as exc:
        raise Unauthorized(str(exc)) from None


def _principal_from_token(runtime: Runtime, token: str) -> Principal:
    claims = _verified(runtime, token)
    return _live_principal(claims, _live_role(runtime.db, claims))


def _live_role(db: Database, claims: AccessClaims) -> str | None:
    with db.read_connection() as conn:
        role: str | None = conn.execute(_LIVE_ROLE, _session_params(claims)).scalar()
    return role


def _live_principal(claims: AccessClaims, role: str | None) -> Principal:
    if role is None:
        raise Unauthorized("session ended or membership revoked; log in again")
    return Principal(
        tenant_id=claims.tenant_id,
        role=Role(role),
        user_id=claims.user_id,
        session_id=claims.session_id,
    )


def _principal_from_api_key(runtime: Runtime, key: str) -> Principal:
    prefix = parse_api_key_prefix(key)
    if prefix is None:
        raise Unauthorized("malformed API key")
    with runtime.db.read() as session:
        found = session.scalars(select(ApiKey).where(ApiKey.prefix == prefix)).first()
    if found is None or found.revoked_at is not None or not _same(found.key_hash, digest(key)):
        raise Unauthorized("unknown or revoked API key")
    now = utcnow()
    if found.last_used_at is None or now - found.last_used_at > LAST_USED_GRANULARITY:
        # Recorded at minute granularity so that a busy key does not write per request.
        with runtime.db.unit_of_work() as uow:
            uow.session.execute(
                update(ApiKey).where(ApiKey.id == found.id).values(last_used_at=now)
            )
    return Principal(tenant_id=found.tenant_id, role=Role(found.role), api_key_id=found.id)


def parse_api_key_prefix(key: str) -> str | None:
    if not key.startswith(API_KEY_PREFIX):
        return None
    prefix, _, rest = key.removeprefix(API_KEY_PREFIX).partition("_")
    return prefix if len(prefix) == 12 and rest else None


def _same(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())


def _context_dependency(permission: str | None) -> Any:
    if permission is not None:
        get_permission(permission)  # fail at import time on a typo

    async def dependency(request: Request, response: Response) -> Context:
        runtime: Runtime = request.app.state.runtime  # not RuntimeDep: one dependency less
        token, api_key = _credentials(request)
        return await _context(permission, request, response, runtime, token, api_key)

    setattr(dependency, _AUTHENTICATES, True)
    return Depends(dependency)


async def _context(
    permission: str | None,
    request: Request,
    response: Response,
    runtime: Runtime,
    token: str | None,
    api_key: str | None,
) -> Context:
    def check() -> Context:
        principal = principal_from_credentials(
            runtime, token=token, api_key=api_key, missing=_NO_CREDENTIALS
        )
        return _admitted(principal, permission, request, response, runtime)

    if runtime.db.is_sqlite and not token:
        return await run_in_threadpool(check)
    return await run_read(runtime.db, check)


def _admitted(
    principal: Principal,
    permission: str | None,
    request: Request,
    response: Response,
    runtime: Runtime,
    *,
    count: bool = True,
) -> Context:
    """The request's context once ``principal`` is known: rate limit (unless the
    request has been ``count``ed already), then permission."""
    request.state.principal = principal
    if count:
        state = runtime.rate_limiter.enforce(
            runtime.settings.rate_limit_api, "principal", principal.subject, what="this principal"
        )
        response.headers.update(state.headers())
    if permission is not None and not principal.has(permission):
        raise Forbidden(
            f"your role '{principal.role}' lacks the permission '{permission}'",
            permission=permission,
        )
    return Context(runtime.db, runtime.settings, principal, request_info(request))


class PendingContext:
    """A request whose token is verified but whose session is not checked yet.

    The use case checks it with its first read (:func:`admit_with`) or on its
    own (:meth:`context`); once checked, the context is kept, so that the rate
    limit counts the request once.

    A use case that reads nothing first may instead :meth:`assume` the role this
    process last saw live for the session (see ``opsline.platform.last_seen``),
    provided its write checks it (:meth:`session_check`). After a failed check it
    calls :meth:`context` or :func:`admit_with`, which check the session anew: a
    401 if it ended, the role's permission again if it changed.
    """

    __slots__ = ("_admit", "_checked", "_context", "claims", "db", "permission", "settings")

    def __init__(
        self,
        db: Database,
        settings: Settings,
        claims: AccessClaims | None,
        admit: Callable[[Principal, bool], Context],
        context: Context | None = None,
        *,
        permission: str,
    ) -> None:
        self.db, self.settings, self.claims = db, settings, claims
        self.permission = permission
        self._admit = admit
        self._context = context  # already admitted (an API key)
        self._checked = context is not None

    @property
    def tenant_id(self) -> uuid.UUID:
        """The token's tenant (signed; the session may still have ended)."""
        if self._context is not None:
            return self._context.tenant_id
        assert self.claims is not None
        return self.claims.tenant_id

    def context(self) -> Context:
        """The session's check as a statement of its own."""
        if self._context is None or not self._checked:
            assert self.claims is not None
            return self._admitted_as(_live_role(self.db, self.claims))
        return self._context

    def assume(self) -> Context | None:
        """Admitted as the role last seen live for this session, without a statement;
        None if none was seen, if it lacks the permission (the session's check then
        decides: the role may have changed), or if the request was admitted another way."""
        if self._context is not None or self.claims is None:
            return None
        role = _LAST_ROLES.get(self.claims.session_id)
        if role is None:
            return None
        principal = _live_principal(self.claims, role)
        if not principal.has(self.permission):
            return None
        self._context = self._admit(principal, True)
        return self._context

    def session_check(self) -> tuple[Select[Any], dict[str, Any]] | None:
        """For an assumed role: a SELECT with one row while the session is live with
        that role (a guard for the write to carry); None once the session is checked."""
        if self._checked or self._context is None:
            return None
        assert self.claims is not None
        params = {**_session_params(self.claims), "session_role": self._context.principal.role}
        return _SAME_ROLE, params

    def _admitted_as(self, role: str | None) -> Context:
        """The context, once ``role`` (the live session's, None if it ended) is known."""
        if self._checked:
            assert self._context is not None
            return self._context
        assert self.claims is not None
        assumed = self._context
        if role is None:
            _LAST_ROLES.forget(self.claims.session_id)
        principal = _live_principal(self.claims, role)
        _LAST_ROLES.put(self.claims.session_id, principal.role.value)  # even if it is refused
        if assumed is None or assumed.principal.role != principal.role:
            # An assumed request has been counted by the rate limit already.
            self._context = self._admit(principal, assumed is None)
        self._checked = True
        return cast(Context, self._context)


def with_session_role(statement: Select[Any]) -> Select[Any]:
    """``statement`` with the live session's role as one more column, for :func:`admit_with`.

    Build it once (a module constant): the statement keeps its compiled form.
    """
    return statement.add_columns(_LIVE_ROLE.scalar_subquery().label(_SESSION_ROLE))


def admit_with(
    who: Context | PendingContext,
    statement: Select[Any],
    params: Mapping[str, Any],
) -> tuple[Context, Sequence[Any]]:
    """Run ``statement`` (made by :func:`with_session_role`), checking ``who``'s session with it.

    The rows answer for ``who``'s tenant only after the check, which happens
    here: a session that ended raises 401, a role without the permission 403,
    and no row is returned. With no rows the check runs on its own. The
    statement runs on a read connection, outside any transaction (``Database.fetch``).
    """
    claims = who.claims if isinstance(who, PendingContext) else None
    bound = {**params, **_session_params(claims)}
    rows = who.db.fetch(statement, bound)
    if isinstance(who, Context):
        return who, rows
    if not rows:
        return who.context(), rows
    return who._admitted_as(getattr(rows[0], _SESSION_ROLE)), rows


def PendingPermission(permission: str) -> Any:
    """``Annotated[PendingContext, PendingPermission("x")]``: like :func:`RequirePermission`,
    the session checked by the use case (see :class:`PendingContext`)."""
    get_permission(permission)

    async def dependency(request: Request, response: Response) -> PendingContext:
        runtime: Runtime = request.app.state.runtime
        token, api_key = _credentials(request)

        def admit(principal: Principal, count: bool) -> Context:
            return _admitted(principal, permission, request, response, runtime, count=count)

        db, settings = runtime.db, runtime.settings
        if token:
            claims = _verified(runtime, token)
            return PendingContext(db, settings, claims, admit, permission=permission)
        ready = await _context(permission, request, response, runtime, token, api_key)
        return PendingContext(db, settings, None, admit, ready, permission=permission)

    setattr(dependency, _AUTHENTICATES, True)
    return Depends(dependency)


def RequirePermission(permission: str) -> Any:
    """``Annotated[Context, RequirePermission("x")]``: authenticated and permitted."""
    return _context_dependency(permission)


Authenticated = Annotated[Context, _context_dependency(None)]


def parse_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
