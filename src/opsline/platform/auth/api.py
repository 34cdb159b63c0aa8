"""Authentication endpoints: sign-up, login, refresh, logout, /me, API keys."""

from __future__ import annotations

import uuid
from typing import Annotated

import redis
import structlog
from fastapi import APIRouter, Request, Response, status

from opsline.platform.auth import service
from opsline.platform.auth.roles import APIKEYS_MANAGE, permissions_of
from opsline.platform.auth.schemas import (
    ApiKeyCreated,
    ApiKeyIn,
    ApiKeyOut,
    LoginIn,
    MembershipOut,
    MeOut,
    RefreshIn,
    SignupIn,
    SignupOut,
    TenantOut,
    TokenPair,
    UserOut,
)
from opsline.platform.context import Context
from opsline.platform.http.deps import Authenticated, RequirePermission, RuntimeDep, client_ip
from opsline.platform.http.pagination import Page, PageDep
from opsline.platform.http.problems import TooManyRequests
from opsline.platform.http.routing import Route
from opsline.platform.runtime import Runtime
from opsline.platform.tenancy import service as tenancy

router = APIRouter(tags=["auth"], route_class=Route)
log = structlog.get_logger(__name__)


def _limit_ip(runtime: Runtime, request: Request, response: Response, what: str) -> None:
    state = runtime.rate_limiter.enforce(
        runtime.settings.rate_limit_auth, what, client_ip(request), what=f"{what} from this IP"
    )
    response.headers.update(state.headers())


def count_account_attempt(runtime: Runtime, request: Request, email: str) -> None:
    """Count an attempt at ``email``'s password against the account's limit, whatever
    the address; over it, refuse (429) unless the address is one the account has
    logged in from (``account_login_succeeded``).

    Counted before the password is checked, as per address, and only once the
    per-address limit has let the attempt through: refusals there check no password,
    so a stranger hammering from one address brings no pause nearer. Failures from
    known addresses count too; they are only never refused by this limit.
    """
    limiter, rate = runtime.rate_limiter, runtime.settings.rate_limit_failed_login_account
    attempt = limiter.hit(rate, "failed-login-account", email)
    if not attempt.allowed and not _is_known_address(runtime, email, client_ip(request)):
        raise TooManyRequests(
            f"too many failed logins for this account from any address; logins to it are"
            f" paused from addresses it has not logged in from recently; retry after"
            f" {attempt.reset_after} s (or log in from an address you used before)",
            headers=attempt.headers(),
        )


def account_login_succeeded(runtime: Runtime, request: Request, email: str) -> None:
    """The password was right: clear the account's failures and remember the address
    (for ``refresh_token_days``, from this login) as one its owner logs in from."""
    rate = runtime.settings.rate_limit_failed_login_account
    runtime.rate_limiter.clear(rate, "failed-login-account", email)
    _remember_address(runtime, email, client_ip(request))


def _remember_address(runtime: Runtime, email: str, address: str) -> None:
    key, storage = _known_key(email, address), runtime.rate_limiter.storage
    try:
        storage.clear(key)  # so that the lifetime starts again from now
        storage.incr(key, runtime.settings.refresh_token_days * 24 * 3600)
    except (redis.RedisError, TimeoutError) as exc:
        # The login stands: the address is only not remembered this time.
        log.warning("login_address_not_remembered", error=type(exc).__name__)


def _is_known_address(runtime: Runtime, email: str, address: str) -> bool:
    try:
        return runtime.rate_limiter.storage.get(_known_key(email, address)) > 0
    except (redis.RedisError, TimeoutError) as exc:
        log.warning("login_address_not_checked", error=type(exc).__name__)
        return False


def _known_key(email: str, address: str) -> str:
    # In the limiter's storage (shared by the servers when it is Redis), apart
    # from its counters' keys, which begin with "LIMITER/".
    return f"opsline/login-address/{email}/{address}"


@router.post(
    "/auth/signup",
    status_code=status.HTTP_201_CREATED,
    response_model=SignupOut,
    summary="Create an account and a tenant owned by it",
)
def signup(body: SignupIn, request: Request, response: Response, runtime: RuntimeDep) -> SignupOut:
    _limit_ip(runtime, request, response, "signup")
    user, tenant, pair = service.signup(
        runtime, email=body.email, password=body.password, tenant_name=body.tenant_name
    )
    _remember_address(runtime, user.email, client_ip(request))
    return SignupOut(
        user=UserOut.model_validate(user), tenant=TenantOut.model_validate(tenant), tokens=pair
    )


@router.post("/auth/login", response_model=TokenPair, summary="Exchange credentials for tokens")
def login(body: LoginIn, request: Request, response: Response, runtime: RuntimeDep) -> TokenPair:
    _limit_ip(runtime, request, response, "login")
    limiter, rate = runtime.rate_limiter, runtime.settings.rate_limit_failed_login
    email = service.normalize_email(body.email)
    keys = ("failed-login", client_ip(request), email)
    # Counted before the password is checked, so that requests sent at once cannot
    # all pass a count that only failures finished so far have raised; a login
    # that succeeds clears its count.
    attempt = limiter.hit(rate, *keys)
    if not attempt.allowed:
        raise TooManyRequests(
            f"too many failed logins for this account from this IP; retry after "
            f"{attempt.reset_after} s",
            headers=attempt.headers(),
        )
    count_account_attempt(runtime, request, email)
    pair = service.login(
        runtime, email=body.email, password=body.password, tenant_id=body.tenant_id
    )
    limiter.clear(rate, *keys)
    account_login_succeeded(runtime, request, email)
    return pair


@router.post("/auth/refresh", response_model=TokenPair, summary="Rotate a refresh token")
def refresh(
    body: RefreshIn, request: Request, response: Response, runtime: RuntimeDep
) -> TokenPair:
    _limit_ip(runtime, request, response, "refresh")
    return service.refresh(runtime, refresh_token=body.refresh_token)


@router.post(
    "/auth/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="End this login session (its access and refresh tokens stop working)",
)
def logout(ctx: Authenticated) -> Response:
    service.logout(ctx)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/me", response_model=MeOut, summary="Who am I, in which tenant, with what rights")
def me(ctx: Authenticated) -> MeOut:
    principal = ctx.principal
    tenant = tenancy.get_tenant(ctx.db, ctx.tenant_id)
    user = service.get_user(ctx.db, principal.user_id) if principal.user_id else None
    memberships = tenancy.memberships_of(ctx.db, principal.user_id) if principal.user_id else []
    return MeOut(
        user=UserOut.model_validate(user) if user else None,
        api_key_id=principal.api_key_id,
        tenant=TenantOut.model_validate(tenant),
        role=principal.role,
        permissions=sorted(permissions_of(principal.role)),
        memberships=[
            MembershipOut(tenant=TenantOut.model_validate(t), role=r) for t, r in memberships
        ],
    )


ApiKeysCtx = Annotated[Context, RequirePermission(APIKEYS_MANAGE.name)]


@router.post(
    "/api-keys",
    status_code=status.HTTP_201_CREATED,
    response_model=ApiKeyCreated,
    tags=["api keys"],
    summary="Create an API key (the secret is shown once)",
)
def create_api_key(body: ApiKeyIn, ctx: ApiKeysCtx) -> ApiKeyCreated:
    key, secret = service.create_api_key_for(ctx, name=body.name, role=body.role)
    return ApiKeyCreated(**ApiKeyOut.model_validate(key).model_dump(), key=secret)


@router.get("/api-keys", response_model=Page[ApiKeyOut], tags=["api keys"])
def list_api_keys(ctx: ApiKeysCtx, page: PageDep) -> Page[ApiKeyOut]:
    result = service.list_api_keys(ctx, cursor=page.cursor, limit=page.limit)
    return Page(
        items=[ApiKeyOut.model_validate(k) for k in result.items], next_cursor=result.next_cursor
    )


@router.delete(
    "/api-keys/{key_id}", response_model=ApiKeyOut, tags=["api keys"], summary="Revoke an API key"
)
def revoke_api_key(key_id: uuid.UUID, ctx: ApiKeysCtx) -> ApiKeyOut:
    key = service.revoke_api_key(ctx.db, key_id=key_id, tenant_id=ctx.tenant_id)
    return ApiKeyOut.model_validate(key)
