"""Scheduler: one leader, one job per slot, a missed slot runs once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from opsline.db import Database
from opsline.platform.engine.models import periodic_table
from opsline.platform.engine.scheduler import PeriodicJob, Scheduler, periodic
from opsline.settings import Settings
from tests.platform.engine import sample_jobs
from tests.platform.engine.helpers import states

EVERY_MINUTE = PeriodicJob(sample_jobs.tick, "* * * * *")
T0 = datetime(2026, 11, 23, 12, 0, 30, tzinfo=UTC)


def test_two_schedulers_one_leader_one_job_per_slot(
    db: Database, engine_settings: Settings
) -> None:
    a = Scheduler(db, engine_settings, jobs=[EVERY_MINUTE])
    b = Scheduler(db, engine_settings, jobs=[EVERY_MINUTE])
    assert a.tick(T0) == [] and b.tick(T0) == []  # first sight: starts with the next slot
    enqueued = []
    for minute in range(1, 4):
        now = T0 + timedelta(minutes=minute)
        enqueued.append((len(a.tick(now)), len(b.tick(now))))
    assert enqueued == [(1, 0), (1, 0), (1, 0)]
    assert states(db) == {"available": 3}


def test_lease_moves_to_the_other_scheduler_when_the_leader_stops(
    db: Database, engine_settings: Settings
) -> None:
    a = Scheduler(db, engine_settings, jobs=[EVERY_MINUTE])
    b = Scheduler(db, engine_settings, jobs=[EVERY_MINUTE])
    a.tick(T0)
    a.release()
    assert len(b.tick(T0 + timedelta(minutes=1))) == 1
    assert a.tick(T0 + timedelta(minutes=1, seconds=1)) == []  # b holds the lease now


def test_missed_slots_run_once_on_start(db: Database, engine_settings: Settings) -> None:
    scheduler = Scheduler(db, engine_settings, jobs=[EVERY_MINUTE])
    scheduler.tick(T0)
    with db.unit_of_work() as uow:
        uow.session.execute(update(periodic_table).values(last_slot_at=T0 - timedelta(hours=5)))
    assert len(scheduler.tick(T0 + timedelta(seconds=1))) == 1
    assert scheduler.tick(T0 + timedelta(seconds=2)) == []


def test_bad_cron_is_rejected_at_declaration() -> None:
    with pytest.raises(ValueError, match="cron"):
        periodic("every now and then")
