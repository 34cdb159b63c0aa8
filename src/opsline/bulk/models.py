"""Tables of bulk actions.

``bulk_runs`` is also the audit log: one row per run and per undo (who, tenant,
action, resource, selection, parameters, counts, ip, user agent, timestamps,
outcome; the digest of the confirmation token it used, once per tenant).
``bulk_run_items`` is the selection resolved once at start (record ids
numbered into chunks); ``bulk_chunks`` marks a chunk applied in the chunk's own
transaction (the retry guard); ``bulk_snapshots`` holds one AES-GCM blob per
chunk with the original values; ``bulk_failures`` the per-record failures.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from opsline.db import Base, new_id, utcnow

BigId = BigInteger().with_variant(Integer(), "sqlite")


class BulkRun(Base):
    __tablename__ = "bulk_runs"
    __table_args__ = (
        Index(None, "tenant_id", "created_at", "id"),
        Index(None, "tenant_id", "status"),
        # The undos of a run: which of its records they restored (bulk/_restored.py).
        Index(None, "tenant_id", "undo_of"),
        Index(None, "undo_expires_at"),
        # A confirmation token confirms one run: the second run with it cannot commit.
        Index(None, "tenant_id", "confirmation_digest", unique=True),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(8))
    resource: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(24))
    filters: Mapped[list[Any]] = mapped_column(JSON)
    record_ids: Mapped[list[Any] | None] = mapped_column(JSON)
    params: Mapped[dict[str, Any]]
    batch_size: Mapped[int] = mapped_column(Integer)
    undo_days: Mapped[int | None] = mapped_column(Integer)
    undo_expires_at: Mapped[datetime | None]
    undo_of: Mapped[uuid.UUID | None]
    undone_by: Mapped[uuid.UUID | None]
    force: Mapped[bool] = mapped_column(default=False)
    total: Mapped[int] = mapped_column(Integer, default=0)
    processed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    batch_id: Mapped[uuid.UUID | None]
    actor: Mapped[str] = mapped_column(String(80))
    actor_role: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[uuid.UUID | None]
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(400))
    error: Mapped[str | None] = mapped_column(Text)
    confirmation_digest: Mapped[str | None] = mapped_column(String(64))
    scheduled_at: Mapped[datetime | None]
    timezone: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class BulkRunItem(Base):
    """One selected record of a run (no tenant column: reached only through its run)."""

    __tablename__ = "bulk_run_items"

    run_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    chunk: Mapped[int] = mapped_column(Integer, primary_key=True)
    record_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)


class BulkChunk(Base):
    """A chunk that was applied: written in the chunk's transaction, so a retry is a no-op."""

    __tablename__ = "bulk_chunks"

    run_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    chunk: Mapped[int] = mapped_column(Integer, primary_key=True)
    processed: Mapped[int] = mapped_column(Integer)
    failed: Mapped[int] = mapped_column(Integer)
    applied_at: Mapped[datetime] = mapped_column(default=utcnow)


class BulkSnapshot(Base):
    """Original values of one chunk, encrypted (AES-GCM, tenant and run bound in)."""

    __tablename__ = "bulk_snapshots"
    __table_args__ = (Index(None, "expires_at"),)

    run_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    chunk: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(index=True)
    mode: Mapped[str] = mapped_column(String(8))
    records: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    expires_at: Mapped[datetime]


class BulkFailure(Base):
    __tablename__ = "bulk_failures"
    __table_args__ = (Index(None, "run_id", "chunk"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID]
    tenant_id: Mapped[uuid.UUID] = mapped_column(index=True)
    chunk: Mapped[int] = mapped_column(Integer)
    record_id: Mapped[uuid.UUID]
    reason: Mapped[str] = mapped_column(String(300))


runs_table = cast(Table, BulkRun.__table__)
items_table = cast(Table, BulkRunItem.__table__)
chunks_table = cast(Table, BulkChunk.__table__)
snapshots_table = cast(Table, BulkSnapshot.__table__)
failures_table = cast(Table, BulkFailure.__table__)
