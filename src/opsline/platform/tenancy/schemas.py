"""Members and invitations."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from opsline.platform.auth.roles import Role
from opsline.platform.auth.schemas import PASSWORD_MAX, PASSWORD_MIN, Strict
from opsline.platform.http.inputs import OneLine


class MemberOut(BaseModel):
    user_id: uuid.UUID
    email: str
    role: Role
    joined_at: datetime


class InviteIn(Strict):
    email: EmailStr
    role: Role = Role.MEMBER


class InvitationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    email: str
    role: Role
    created_at: datetime
    expires_at: datetime
    accepted_at: datetime | None
    revoked_at: datetime | None


class InvitationCreated(InvitationOut):
    token: str = Field(description="Give this to the invitee; shown once.")


class AcceptInviteIn(Strict):
    token: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX)


class RoleIn(Strict):
    role: Role


class TenantRenameIn(Strict):
    name: OneLine = Field(min_length=1, max_length=200)
