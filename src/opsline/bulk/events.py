"""Events of bulk actions, on the engine's event log (v1)."""

from __future__ import annotations

import uuid
from typing import ClassVar

from opsline.platform.engine.events import Event


class _RunEvent(Event):
    run_id: uuid.UUID
    resource: str
    action: str
    total: int
    processed: int = 0
    failed: int = 0


class BulkActionStarted(_RunEvent):
    event_type: ClassVar[str] = "bulk.action_started"


class BulkActionProgress(_RunEvent):
    event_type: ClassVar[str] = "bulk.action_progress"


class BulkActionCompleted(_RunEvent):
    event_type: ClassVar[str] = "bulk.action_completed"
    status: str


class BulkActionFailed(_RunEvent):
    event_type: ClassVar[str] = "bulk.action_failed"
    error: str | None = None


class BulkActionCancelled(_RunEvent):
    event_type: ClassVar[str] = "bulk.action_cancelled"


class BulkActionUndone(_RunEvent):
    event_type: ClassVar[str] = "bulk.action_undone"
    undo_run_id: uuid.UUID
