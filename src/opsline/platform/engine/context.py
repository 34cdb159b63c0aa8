"""What a running job sees: its identity, the database, and a cancellation flag."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from opsline.db import Database, UnitOfWork
from opsline.platform.engine.errors import JobCancelled
from opsline.platform.http.db_work import run_write
from opsline.settings import Settings

T = TypeVar("T")


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
    # The event loop of the server the worker is embedded in (see short_unit).
    loop: asyncio.AbstractEventLoop | None = None

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

    def short_unit(self, work: Callable[[bool], T]) -> T:
        """``work(wait)``: one short unit of work, ``db.unit_of_work(wait=wait)``, that
        waits on nothing but the database; its result.

        In a worker embedded in ``opsline serve`` it runs on the server's event
        loop, as the server runs its requests' units (``run_write``): on
        PostgreSQL its statements are awaited there, on SQLite it runs inline
        once the write lock is free. Run from the job's thread instead, each of
        its round trips hands the GIL back and forth with the busy loop, and on
        SQLite it holds the write lock (every order waits) while it waits to get
        the GIL back. Everywhere else it runs here, in the job's thread: in
        ``opsline worker``, in a test, and wherever requests' units go to the
        thread pool (``Settings.units_on_loop``: with a broker, or SQLite with Redis).

        ``work`` must be one unit and nothing else: on SQLite a unit that finds
        the lock taken raises ``WriteLockBusy`` before it does anything, and
        ``work`` is called again.
        """
        loop = self.loop
        if loop is None or not self.settings.units_on_loop:
            return work(True)
        future = asyncio.run_coroutine_threadsafe(run_write(self.db, work), loop)
        while True:
            try:
                # Woken each second, so that the worker's timeout can land here.
                return future.result(timeout=1.0)
            except concurrent.futures.TimeoutError:
                continue
