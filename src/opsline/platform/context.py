"""Who is acting, for which tenant, through which request.

Services take a :class:`Context` first. The tenant comes only from the
authenticated principal, never from a request body.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from opsline.db import Database
from opsline.platform.auth.roles import Role, permissions_of
from opsline.settings import Settings


@dataclass(frozen=True, slots=True)
class Principal:
    tenant_id: uuid.UUID
    role: Role
    user_id: uuid.UUID | None = None
    api_key_id: uuid.UUID | None = None
    session_id: uuid.UUID | None = None

    @property
    def subject(self) -> str:
        if self.user_id is not None:
            return f"user:{self.user_id}"
        if self.api_key_id is not None:
            return f"apikey:{self.api_key_id}"
        return "system"

    def has(self, permission: str) -> bool:
        return permission in permissions_of(self.role)


def system_principal(tenant_id: uuid.UUID) -> Principal:
    """The operator at the command line: every permission within one tenant."""
    return Principal(tenant_id=tenant_id, role=Role.OWNER)


@dataclass(frozen=True, slots=True)
class RequestInfo:
    request_id: str = ""
    ip: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True, slots=True)
class Context:
    db: Database
    settings: Settings
    principal: Principal
    request: RequestInfo = field(default_factory=RequestInfo)

    @property
    def tenant_id(self) -> uuid.UUID:
        return self.principal.tenant_id
