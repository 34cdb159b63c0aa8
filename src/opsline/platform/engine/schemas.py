"""Response shapes of the engine's admin API and CLI."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    queue: str
    state: str
    tenant_id: uuid.UUID | None
    priority: int
    attempt: int
    max_attempts: int
    args: dict[str, Any]
    run_at: datetime
    created_at: datetime
    attempted_at: datetime | None
    finished_at: datetime | None
    last_error: str | None
    batch_id: uuid.UUID | None
    cancel_requested: bool


class JobErrorOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    attempt: int
    error_type: str
    message: str
    traceback: str
    worker: str | None
    failed_at: datetime


class JobDetail(JobOut):
    errors: list[JobErrorOut]


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    tenant_id: uuid.UUID | None
    type: str
    version: int
    occurred_at: datetime
    payload: dict[str, Any]


class BatchOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    total: int
    succeeded: int
    failed: int
    cancelled: int
    progress: float
    cancel_requested: bool
    created_at: datetime
    finished_at: datetime | None


class CountOut(BaseModel):
    count: int
