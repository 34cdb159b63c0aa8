"""Periodic jobs and the scheduler: one active leader across processes and machines.

Declare with ``@periodic("*/5 * * * *")`` stacked on a ``@job``. The scheduler
(``opsline scheduler``, or a thread of ``opsline serve``) ticks every second.
Each tick is one transaction that first takes or renews the ``scheduler``
lease (a conditional ``UPDATE`` of one row: only its owner, or anyone once it
expired), and only then enqueues due jobs, so a scheduler that lost the lease
cannot enqueue. Each periodic job's last slot is advanced by compare-and-set,
so even two overlapping leaders enqueue a slot once. A slot missed while no
scheduler ran is run once on start, not once per missed slot; a periodic job
seen for the first time starts with the next slot.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import structlog
from croniter import croniter
from sqlalchemy import CursorResult, Executable, insert, select, update
from sqlalchemy.orm import Session

from opsline.db import Database, UnitOfWork, utcnow
from opsline.platform.engine.enqueue import enqueue
from opsline.platform.engine.models import leases_table, periodic_table
from opsline.platform.engine.registry import JobDef
from opsline.settings import Settings

log = structlog.get_logger("opsline.engine")
LEASE_NAME = "scheduler"
EXPIRED = datetime(1970, 1, 1, tzinfo=UTC)
L = leases_table.c
P = periodic_table.c


@dataclass(frozen=True)
class PeriodicJob:
    job: JobDef
    cron: str
    args: Mapping[str, Any] = field(default_factory=dict)

    def latest_slot(self, now: datetime) -> datetime:
        """The most recent cron slot at or before ``now``."""
        previous: datetime = croniter(self.cron, now).get_prev(datetime)
        following: datetime = croniter(self.cron, previous).get_next(datetime)
        return following if following <= now else previous

    def next_slot(self, after: datetime) -> datetime:
        slot: datetime = croniter(self.cron, after).get_next(datetime)
        return slot


_PERIODIC: dict[str, PeriodicJob] = {}


def periodic(cron: str, *, args: Mapping[str, Any] | None = None) -> Callable[[JobDef], JobDef]:
    """Run the decorated ``@job`` on a cron schedule (UTC), with fixed ``args``."""
    if not croniter.is_valid(cron):
        raise ValueError(f"not a cron expression: {cron!r}")

    def decorate(definition: JobDef) -> JobDef:
        definition.validate(args or {})
        _PERIODIC[definition.name] = PeriodicJob(definition, cron, dict(args or {}))
        return definition

    return decorate


def periodic_jobs() -> list[PeriodicJob]:
    return sorted(_PERIODIC.values(), key=lambda p: p.job.name)


class Scheduler:
    """Enqueues due periodic jobs while it holds the scheduler lease (a BackgroundService)."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        jobs: Sequence[PeriodicJob] | None = None,
        tick_seconds: float = 1.0,
    ) -> None:
        self.db = db
        self.jobs = list(jobs) if jobs is not None else None
        self.owner = f"{socket.gethostname()[:24]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease = timedelta(seconds=settings.job_lease_seconds)
        self.tick_seconds = tick_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="opsline-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None or self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self.release()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.warning("scheduler_tick_failed", owner=self.owner, exc_info=True)
            self._stop.wait(self.tick_seconds)

    def tick(self, now: datetime | None = None) -> list[int]:
        """Take or renew the lease; if leader, enqueue due jobs. Returns their ids."""
        now = now or utcnow()
        with self.db.unit_of_work() as uow:
            if not self._hold_lease(uow.session, now):
                return []
            return [
                job_id
                for item in (self.jobs if self.jobs is not None else periodic_jobs())
                if (job_id := self._run_if_due(uow, item, now)) is not None
            ]

    def _hold_lease(self, session: Session, now: datetime) -> bool:
        renewed = _execute(
            session,
            update(leases_table)
            .where(L.name == LEASE_NAME, (L.owner == self.owner) | (L.expires_at < now))
            .values(owner=self.owner, expires_at=now + self.lease),
        )
        if renewed == 1:
            return True
        exists = session.execute(select(L.owner).where(L.name == LEASE_NAME)).first()
        if exists is not None:
            return False
        session.execute(
            insert(leases_table).values(
                name=LEASE_NAME, owner=self.owner, expires_at=now + self.lease
            )
        )
        log.info("scheduler_leader", owner=self.owner)
        return True

    def _run_if_due(self, uow: UnitOfWork, item: PeriodicJob, now: datetime) -> int | None:
        session = uow.session
        name = item.job.name
        last = session.execute(select(P.last_slot_at).where(P.name == name)).scalar_one_or_none()
        latest = item.latest_slot(now)
        if last is None:
            session.execute(insert(periodic_table).values(name=name, last_slot_at=latest))
            return None
        if item.next_slot(last) > now:
            return None
        moved = _execute(
            session,
            update(periodic_table)
            .where(P.name == name, P.last_slot_at == last)
            .values(last_slot_at=latest),
        )
        if moved != 1:
            return None
        log.info("periodic_enqueued", job=name, slot=latest.isoformat())
        return enqueue(uow, item.job, item.args)

    def release(self) -> None:
        """Give the lease up so another scheduler takes over at once."""
        with self.db.unit_of_work() as uow:
            uow.session.execute(
                update(leases_table)
                .where(L.name == LEASE_NAME, L.owner == self.owner)
                .values(expires_at=EXPIRED)
            )


def _execute(session: Session, statement: Executable) -> int:
    """Run a DML statement; return its row count."""
    return cast(CursorResult[Any], session.execute(statement)).rowcount
