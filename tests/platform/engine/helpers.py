"""Helpers of the engine tests: run a worker until a condition holds."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import func, select

from opsline.db import Database
from opsline.platform.engine.models import jobs_table
from opsline.platform.engine.registry import QUEUES
from opsline.platform.engine.worker import Worker
from opsline.settings import Settings

J = jobs_table.c


@contextmanager
def running_worker(
    db: Database, settings: Settings, *, queues: Sequence[str] = QUEUES, concurrency: int = 4
) -> Iterator[Worker]:
    worker = Worker(db, settings, queues=queues, concurrency=concurrency)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``condition``; fail the test (not a timed assertion) if it never holds."""
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("condition never became true")


def states(db: Database) -> dict[str, int]:
    with db.read() as session:
        rows = session.execute(select(J.state, func.count()).group_by(J.state)).all()
    return {str(row[0]): int(row[1]) for row in rows}


def job_row(db: Database, job_id: int) -> Any:
    with db.read() as session:
        return session.execute(select(jobs_table).where(J.id == job_id)).one()


def all_final(db: Database) -> bool:
    current = states(db)
    return not any(current.get(s) for s in ("scheduled", "available", "running", "retryable"))
