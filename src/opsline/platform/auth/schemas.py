"""Request and response shapes of authentication, members and API keys."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator

from opsline.platform.auth.roles import Role
from opsline.platform.http.inputs import OneLine

PASSWORD_MIN = 10
PASSWORD_MAX = 256


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _password(value: str) -> str:
    if value.strip() != value:
        raise ValueError("password must not start or end with spaces")
    return value


class SignupIn(Strict):
    email: EmailStr
    password: str = Field(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX)
    tenant_name: OneLine = Field(min_length=1, max_length=200)

    _check_password = field_validator("password")(_password)


class LoginIn(Strict):
    email: EmailStr
    password: str = Field(min_length=1, max_length=PASSWORD_MAX)
    tenant_id: uuid.UUID | None = None


class RefreshIn(Strict):
    refresh_token: str = Field(min_length=1, max_length=200)


class LogoutIn(Strict):
    refresh_token: str | None = Field(default=None, max_length=200)


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    email: str
    created_at: datetime


class TenantOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    name: str
    slug: str
    created_at: datetime


class SignupOut(BaseModel):
    user: UserOut
    tenant: TenantOut
    tokens: TokenPair


class MembershipOut(BaseModel):
    tenant: TenantOut
    role: Role


class MeOut(BaseModel):
    user: UserOut | None
    api_key_id: uuid.UUID | None = None
    tenant: TenantOut
    role: Role
    permissions: list[str]
    memberships: list[MembershipOut]


class ApiKeyIn(Strict):
    name: OneLine = Field(min_length=1, max_length=120)
    role: Role = Role.MEMBER


class ApiKeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    name: str
    prefix: str
    role: Role
    created_by: uuid.UUID | None = Field(
        description="The member who made it (none: made from the command line); a key "
        "is revoked when its maker leaves the tenant, and capped at their role when "
        "they are given a lower one"
    )
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The secret key. Shown once; store it now.")
