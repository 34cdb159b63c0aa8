"""Request and response shapes of bulk actions (the request shape is a client contract)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

RunStatus = Literal[
    "scheduled", "running", "completed", "completed_with_errors", "failed", "cancelled"
]
FINAL_STATUSES = ("completed", "completed_with_errors", "failed", "cancelled")
ACTIVE_STATUSES = ("running",)
ExportFormat = Literal["csv", "xlsx", "pdf"]


class Condition(BaseModel):
    field: str = Field(max_length=64)
    op: str = Field(max_length=16)
    value: Any = None


class BulkRequest(BaseModel):
    """``{resource, action, where, ids, params, confirmation_token, undo_days, batch_size}``."""

    resource: str = Field(max_length=64)
    action: str = Field(max_length=64)
    where: list[Condition] = Field(default_factory=list, max_length=50)
    ids: list[uuid.UUID] | None = Field(default=None, max_length=10_000)
    params: dict[str, Any] = Field(default_factory=dict)
    confirmation_token: str | None = Field(default=None, max_length=200)
    undo_days: int = Field(default=7, ge=1, le=90)
    batch_size: int | None = Field(default=None, ge=1, le=10_000)


class ScheduleRequest(BulkRequest):
    run_at: datetime = Field(description="When to run; naive times are read in `timezone`")
    timezone: str | None = Field(default=None, max_length=64, examples=["Europe/Paris"])


class RescheduleRequest(BaseModel):
    run_at: datetime
    timezone: str | None = Field(default=None, max_length=64)


class UndoRequest(BaseModel):
    force: bool = Field(default=False, description="Overwrite records changed since the run")


class SampleRecord(BaseModel):
    id: uuid.UUID
    before: dict[str, Any]
    after: dict[str, Any] | None


class PreviewOut(BaseModel):
    count: int
    sample: list[SampleRecord]
    warnings: list[str]
    confirmation_token: str
    confirmation_required: bool
    confirmation_expires_at: datetime
    destructive: bool
    undoable: bool


class RunOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    tenant_id: uuid.UUID
    kind: str
    status: str
    resource: str
    action: str
    total: int
    processed: int
    failed: int
    progress: float = Field(description="0..1 of the records handled (processed + failed)")
    rate: float | None = Field(description="records per second so far")
    eta_seconds: float | None
    where: list[dict[str, Any]]
    ids: list[str] | None
    params: dict[str, Any]
    batch_size: int
    undo_of: uuid.UUID | None
    undone_by: uuid.UUID | None
    undo_expires_at: datetime | None
    actor: str
    actor_role: str
    ip: str | None
    user_agent: str | None
    error: str | None
    scheduled_at: datetime | None
    timezone: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class FailureOut(BaseModel):
    record_id: uuid.UUID
    reason: str


class ActionOut(BaseModel):
    name: str
    permission: str
    destructive: bool
    undoable: bool


class ResourceOut(BaseModel):
    name: str
    label: str
    fields: list[dict[str, Any]]
    actions: list[ActionOut]
    operators: list[str]
