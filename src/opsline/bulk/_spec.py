"""A client's bulk request, validated against the resource registry and the principal."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from opsline.bulk import _confirm
from opsline.bulk._plan import Plan, build_plan
from opsline.bulk._selection import selection_clause
from opsline.bulk.errors import ConfirmationRequired, InvalidBulkRequest
from opsline.bulk.schemas import BulkRequest
from opsline.db import utcnow
from opsline.platform.context import Context, Principal
from opsline.platform.http.problems import Forbidden
from opsline.platform.resources import Resource, all_resources, find_resource


@dataclass(frozen=True)
class Spec:
    resource: Resource
    action: str
    where: list[dict[str, Any]]
    ids: list[uuid.UUID] | None
    params: dict[str, Any]
    batch_size: int
    undo_days: int
    plan: Plan

    def fingerprint(self, principal: Principal) -> bytes:
        return _confirm.fingerprint(
            tenant_id=principal.tenant_id,
            subject=principal.subject,
            resource=self.resource.name,
            action=self.action,
            where=self.where,
            ids=self.ids,
            params=self.params,
        )


def resource_for(name: str) -> Resource:
    resource = find_resource(name)
    if resource is None:
        allowed = ", ".join(r.name for r in all_resources())
        message = f"unknown resource {name!r}; use one of {allowed}"
        raise InvalidBulkRequest(message, errors=[{"loc": ["body", "resource"], "msg": message}])
    return resource


def check_permission(principal: Principal, resource: Resource, action: str) -> None:
    permission = resource.permission_for(action)
    if permission is None or not principal.has(permission):
        raise Forbidden(
            f"your role '{principal.role}' lacks the permission '{permission}' "
            f"to {action} {resource.name}",
            permission=permission,
        )


def _nul_at(value: Any, loc: list[Any]) -> list[Any] | None:
    """Where in ``value`` a text holds NUL (PostgreSQL text and JSON cannot store it)."""
    if isinstance(value, str):
        return loc if "\x00" in value else None
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _nul_at(key, [*loc, key]) or _nul_at(item, [*loc, key])
        if found is not None:
            return found
    return None


def reject_nul(body: BulkRequest) -> None:
    """422 for a NUL character in any text of ``where`` or ``params``."""
    where = [c.model_dump(mode="json") for c in body.where]
    loc = _nul_at(where, ["body", "where"]) or _nul_at(body.params, ["body", "params"])
    if loc is not None:
        message = "text values cannot contain the NUL character (\\u0000)"
        raise InvalidBulkRequest(message, errors=[{"loc": loc, "msg": message}])


def build_spec(
    ctx: Context, body: BulkRequest, *, now: datetime | None = None, check: bool = True
) -> Spec:
    """Validate everything that can be validated before touching data (422/403)."""
    reject_nul(body)
    resource = resource_for(body.resource)
    plan = build_plan(resource, body.action, body.params, now=now or utcnow())
    if check:
        check_permission(ctx.principal, resource, body.action)
    where = [c.model_dump(mode="json") for c in body.where]
    selection_clause(resource, ctx.tenant_id, where, body.ids)  # validates every condition
    return Spec(
        resource=resource,
        action=body.action,
        where=where,
        ids=list(body.ids) if body.ids is not None else None,
        params=body.params,
        batch_size=body.batch_size or ctx.settings.bulk_batch_size,
        undo_days=body.undo_days,
        plan=plan,
    )


def needs_confirmation(ctx: Context, spec: Spec, count: int) -> bool:
    destructive = spec.resource.is_destructive(spec.action)
    return destructive or count > ctx.settings.bulk_confirm_threshold


def require_confirmation(ctx: Context, spec: Spec, token: str | None) -> None:
    """409 unless ``token`` came from a preview of this very selection and params."""
    problem = _confirm.verify(ctx.settings, token, spec.fingerprint(ctx.principal))
    if problem is None:
        return
    what = "destructive" if spec.resource.is_destructive(spec.action) else "large"
    raise ConfirmationRequired(
        f"this {what} action needs confirmation: preview it first (POST /api/v1/bulk/preview) "
        f"and send its confirmation_token (token {problem})",
        reason=problem,
    )
