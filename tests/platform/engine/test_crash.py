"""Crash test: two worker processes, kill -9 one mid-run, nothing lost or doubled."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from opsline.db import Database
from opsline.platform.engine.enqueue import JobSpec, enqueue_many
from opsline.platform.engine.models import job_errors_table, jobs_table
from opsline.platform.engine.processes import spawn_workers
from opsline.settings import Settings
from tests.platform.engine.helpers import all_final, states, wait_until

J = jobs_table.c
ROOT = Path(__file__).resolve().parents[3]
JOBS = 5000


def _running_of(db: Database, pid: int) -> int:
    with db.read() as session:
        return int(
            session.execute(
                select(func.count()).where(J.state == "running", J.lease_owner.like(f"%:{pid}:%"))
            ).scalar_one()
        )


@pytest.mark.slow
def test_killed_worker_loses_nothing_and_doubles_nothing(
    db: Database, engine_settings: Settings
) -> None:
    with db.unit_of_work() as uow:
        uow.session.execute(
            text("CREATE TABLE crash_rows (key INTEGER PRIMARY KEY, job_id BIGINT)")
        )
    enqueue_many(db, [JobSpec("tests.insert_row", {"key": n}) for n in range(JOBS)])
    fast = engine_settings.model_copy(update={"job_lease_seconds": 2.0})
    group = spawn_workers(
        fast,
        processes=2,
        concurrency=4,
        cwd=str(ROOT),
        imports=["tests.platform.engine.sample_jobs"],
    )
    try:
        victim = group.pids[0]
        wait_until(lambda: states(db).get("succeeded", 0) >= 500, timeout=120)
        wait_until(lambda: _running_of(db, victim) > 0, timeout=60)
        group.kill(0)
        wait_until(lambda: all_final(db), timeout=120)
    finally:
        group.stop()
    assert states(db) == {"succeeded": JOBS}
    with db.read() as session:
        rows, keys = session.execute(
            text("SELECT count(*), count(DISTINCT key) FROM crash_rows")
        ).one()
        rescued = session.execute(select(J.id).where(J.attempt >= 2)).scalars().all()
        lost = (
            session.execute(
                select(job_errors_table.c.job_id).where(
                    job_errors_table.c.error_type == "WorkerLost"
                )
            )
            .scalars()
            .all()
        )
    assert (rows, keys) == (JOBS, JOBS)
    assert rescued, "the killed worker held jobs; they must show a second attempt"
    assert set(rescued) == set(lost)
