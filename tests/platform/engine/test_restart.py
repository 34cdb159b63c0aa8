"""Restart test (PostgreSQL): every connection is killed mid-run; workers reconnect."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from opsline.db import Database
from opsline.platform.engine.enqueue import JobSpec, enqueue_many
from opsline.settings import Settings
from tests.platform.engine.helpers import all_final, running_worker, states, wait_until

JOBS = 2000


def _terminate_other_backends(db: Database) -> int:
    with db.engine.connect() as conn:
        killed = conn.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar_one()
        conn.commit()
    return int(killed)


@pytest.mark.slow
def test_workers_reconnect_after_backends_are_terminated(
    db: Database, engine_settings: Settings
) -> None:
    if db.dialect != "postgresql":
        pytest.skip("pg_terminate_backend is PostgreSQL's")
    with db.unit_of_work() as uow:
        uow.session.execute(
            text("CREATE TABLE crash_rows (key INTEGER PRIMARY KEY, job_id BIGINT)")
        )
    enqueue_many(db, [JobSpec("tests.insert_row", {"key": n}) for n in range(JOBS)])
    with running_worker(db, engine_settings, concurrency=4):
        wait_until(lambda: states(db).get("succeeded", 0) >= 300, timeout=60)
        assert _terminate_other_backends(db) > 0
        wait_until(lambda: all_final(db), timeout=120)
    assert states(db) == {"succeeded": JOBS}
    with db.read() as session:
        rows, keys = session.execute(
            text("SELECT count(*), count(DISTINCT key) FROM crash_rows")
        ).one()
    assert (rows, keys) == (JOBS, JOBS)
