"""Authentication endpoints: sign-up, login, refresh, logout, /me, API keys."""

from __future__ import annotations

import uuid
from typing import Annotated

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
from opsline.platform.http.deps import Authenticated, RequirePermission, RuntimeDep
from opsline.platform.http.pagination import Page, PageDep
from opsline.platform.http.problems import TooManyRequests
from opsline.platform.http.routing import Route
from opsline.platform.runtime import Runtime
from opsline.platform.tenancy import service as tenancy

router = APIRouter(tags=["auth"], route_class=Route)


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _limit_ip(runtime: Runtime, request: Request, response: Response, what: str) -> None:
    state = runtime.rate_limiter.enforce(
        runtime.settings.rate_limit_auth, what, _client_ip(request), what=f"{what} from this IP"
    )
    response.headers.update(state.headers())


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
    return SignupOut(
        user=UserOut.model_validate(user), tenant=TenantOut.model_validate(tenant), tokens=pair
    )


@router.post("/auth/login", response_model=TokenPair, summary="Exchange credentials for tokens")
def login(body: LoginIn, request: Request, response: Response, runtime: RuntimeDep) -> TokenPair:
    _limit_ip(runtime, request, response, "login")
    limiter, rate = runtime.rate_limiter, runtime.settings.rate_limit_failed_login
    keys = ("failed-login", _client_ip(request), service.normalize_email(body.email))
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
    pair = service.login(
        runtime, email=body.email, password=body.password, tenant_id=body.tenant_id
    )
    limiter.clear(rate, *keys)
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
