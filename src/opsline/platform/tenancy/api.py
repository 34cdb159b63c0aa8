"""The tenant, its members and invitations."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Request, Response, status

from opsline.platform.auth.roles import MEMBERS_MANAGE, TENANT_READ, TENANT_UPDATE
from opsline.platform.auth.schemas import TenantOut, TokenPair
from opsline.platform.auth.tokens import digest
from opsline.platform.context import Context
from opsline.platform.http.deps import RequirePermission, RuntimeDep, client_ip
from opsline.platform.http.pagination import Page, PageDep
from opsline.platform.http.problems import TooManyRequests
from opsline.platform.http.routing import Route
from opsline.platform.tenancy import service
from opsline.platform.tenancy.schemas import (
    AcceptInviteIn,
    InvitationCreated,
    InvitationOut,
    InviteIn,
    MemberOut,
    RoleIn,
    TenantRenameIn,
)

router = APIRouter(tags=["tenant"], route_class=Route)

ReadCtx = Annotated[Context, RequirePermission(TENANT_READ.name)]
ManageCtx = Annotated[Context, RequirePermission(MEMBERS_MANAGE.name)]


@router.get("/tenant", response_model=TenantOut, summary="The caller's tenant")
def get_tenant(ctx: ReadCtx) -> TenantOut:
    return TenantOut.model_validate(service.get_tenant(ctx.db, ctx.tenant_id))


@router.patch("/tenant", response_model=TenantOut, summary="Rename the tenant")
def rename_tenant(
    body: TenantRenameIn, ctx: Annotated[Context, RequirePermission(TENANT_UPDATE.name)]
) -> TenantOut:
    return TenantOut.model_validate(service.rename_tenant(ctx, name=body.name))


@router.get("/members", response_model=Page[MemberOut], summary="Members of the tenant")
def list_members(ctx: ReadCtx, page: PageDep) -> Page[MemberOut]:
    return service.list_members(ctx.db, ctx.tenant_id, cursor=page.cursor, limit=page.limit)


@router.patch("/members/{user_id}", response_model=MemberOut, summary="Change a member's role")
def change_role(user_id: uuid.UUID, body: RoleIn, ctx: ManageCtx) -> MemberOut:
    return service.change_role(ctx, user_id=user_id, role=body.role)


@router.delete(
    "/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Remove a member"
)
def remove_member(user_id: uuid.UUID, ctx: ManageCtx) -> Response:
    service.remove_member(ctx, user_id=user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/invitations",
    status_code=status.HTTP_201_CREATED,
    response_model=InvitationCreated,
    summary="Invite someone by email (the token is shown once)",
)
def invite(body: InviteIn, ctx: ManageCtx) -> InvitationCreated:
    invitation, token = service.invite(ctx, email=body.email, role=body.role)
    return InvitationCreated(**InvitationOut.model_validate(invitation).model_dump(), token=token)


@router.get("/invitations", response_model=Page[InvitationOut])
def list_invitations(ctx: ManageCtx, page: PageDep) -> Page[InvitationOut]:
    result = service.list_invitations(ctx, cursor=page.cursor, limit=page.limit)
    return Page(
        items=[InvitationOut.model_validate(i) for i in result.items],
        next_cursor=result.next_cursor,
    )


@router.delete("/invitations/{invitation_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_invitation(invitation_id: uuid.UUID, ctx: ManageCtx) -> Response:
    service.revoke_invitation(ctx, invitation_id=invitation_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/auth/accept-invite",
    response_model=TokenPair,
    tags=["auth"],
    summary="Accept an invitation: join the tenant and log in to it",
)
def accept_invite(
    body: AcceptInviteIn, request: Request, response: Response, runtime: RuntimeDep
) -> TokenPair:
    from opsline.platform.auth import api as auth_api
    from opsline.platform.auth import service as auth

    state = runtime.rate_limiter.enforce(
        runtime.settings.rate_limit_auth,
        "accept-invite",
        client_ip(request),
        what="invitation acceptance from this IP",
    )
    response.headers.update(state.headers())
    # An invitation to an existing account takes that account's password: its
    # wrong guesses count as failed logins do, per invitation, whatever the IP, and
    # for the account, with its logins: one may be invited any number of times.
    failures = (runtime.settings.rate_limit_failed_login, "failed-invite", digest(body.token))
    attempt = runtime.rate_limiter.hit(*failures)
    if not attempt.allowed:
        raise TooManyRequests(
            f"too many failed attempts with this invitation; retry after {attempt.reset_after} s",
            headers=attempt.headers(),
        )
    email = service.invited_email(runtime.db, body.token)
    if email is not None:
        auth_api.count_account_attempt(runtime, request, email)
    user_id, tenant_id = service.accept_invitation(
        runtime.db, token=body.token, password=body.password
    )
    runtime.rate_limiter.clear(*failures)
    if email is not None:
        auth_api.account_login_succeeded(runtime, request, email)
    user = auth.get_user(runtime.db, user_id)
    return auth.login(runtime, email=user.email, password=body.password, tenant_id=tenant_id)
