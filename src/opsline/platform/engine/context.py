"""What a running job sees: its identity, the database, and a cancellation flag."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from opsline.db import Database, UnitOfWork
from opsline.platform.engine.errors import JobCancelled
from opsline.settings import Settings


@dataclass(slots=True)
class JobContext:
    """Handed to every handler as its first argument.

    ``check_cancelled()`` is the cooperative cancellation point: it raises
    :class:`JobCancelled` once an admin cancelled the job (or its batch), or the
    job ran past its timeout; the worker then records the job as cancelled
    (or as a timed-out attempt) instead of succeeded.
    """

    job_id: int
    name: str
    queue: str
    tenant_id: uuid.UUID | None
    attempt: int
    max_attempts: int
    batch_id: uuid.UUID | None
    db: Database
    settings: Settings
    cancel_event: threading.Event = field(default_factory=threading.Event)

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts

    def is_cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check_cancelled(self) -> None:
        if self.cancel_event.is_set():
            raise JobCancelled(f"job {self.job_id} was cancelled")

    @contextmanager
    def unit_of_work(self) -> Iterator[UnitOfWork]:
        with self.db.unit_of_work() as uow:
            yield uow
