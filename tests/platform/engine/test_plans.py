"""How the databases plan the engine's look-ups of waiting jobs.

The enqueue's look-up of a tenant's newest waiting job must take one step down
ix_jobs_fair whatever the statistics say. ix_jobs_claim carries a condition
that only the statements in claim order state (``models.CLAIM_ORDER``), so a
stale estimate cannot steer that look-up to a walk of the queue and a sort.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import Connection, text

from opsline.db import Database
from opsline.platform.engine import _sqlite_hot, enqueue
from opsline.platform.engine._sql import claim_statement
from opsline.platform.engine.enqueue import JobSpec, enqueue_many
from opsline.platform.engine.errors import InvalidJobArgs
from opsline.platform.engine.models import PRIORITY_RANGE
from tests.platform.engine import sample_jobs
from tests.platform.engine.helpers import job_row, running_worker, states, wait_until

TENANTS = (uuid.UUID(int=1), uuid.UUID(int=2))

# Rows written straight in SQL: the statistics are what is under test, not enqueue.
_JOBS = (
    "INSERT INTO jobs (tenant_id, name, queue, priority, vtime, state, args, attempt,"
    " max_attempts, run_at, created_at, cancel_requested, finished_at)"
    " SELECT (ARRAY[CAST(:a AS uuid), CAST(:b AS uuid)])[1 + g % 2], 'tests.noop', 'default', 0,"
    " g, CAST(:state AS text), '{}', 0, 3, now(), now(), false,"
    " CASE WHEN CAST(:state AS text) = 'available' THEN NULL ELSE now() END"
    " FROM generate_series(1, :n) AS g"
)


def _fill(conn: Connection, state: str, n: int) -> None:
    conn.execute(text(_JOBS), {"a": TENANTS[0], "b": TENANTS[1], "state": state, "n": n})


def _plan(conn: Connection, statement: Any, params: dict[str, Any]) -> str:
    compiled = statement.compile(dialect=conn.dialect)
    values = {**compiled.params, **params}
    rows = conn.exec_driver_sql(f"EXPLAIN {compiled}", values).scalars().all()
    return "\n".join(rows)


def test_tail_look_up_steps_down_the_fair_index_on_stale_statistics(
    db: Database, backend: str
) -> None:
    """Statistics taken over 50,000 finished jobs and none waiting, then 35,000
    waiting: the look-up of a tenant's tail still reads one entry of ix_jobs_fair.
    Before the fence it was planned as a walk of ix_jobs_claim filtered by tenant
    and a sort of the tenant's waiting jobs (7 ms, against 0.02 ms)."""
    if backend != "postgresql":
        pytest.skip("SQLite keeps no statistics unless asked to (see the SQLite test)")
    with db.engine.begin() as conn:
        conn.execute(text("ALTER TABLE jobs SET (autovacuum_enabled = false)"))
        _fill(conn, "succeeded", 50_000)
    with db.engine.begin() as conn:
        conn.execute(text("ANALYZE jobs"))
        _fill(conn, "available", 35_000)
    with db.engine.connect() as conn:
        for mode in ("force_custom_plan", "force_generic_plan"):
            conn.execute(text(f"SET plan_cache_mode = {mode}"))
            tail = _plan(conn, enqueue._START, {"q": "default", "t": TENANTS[0]})
            assert "ix_jobs_fair" in tail, tail
            assert "Sort" not in tail, tail
            claim = _plan(conn, claim_statement(1), {"b_queue_0": "default", "n_0": 10})
            assert "ix_jobs_claim" in claim, claim
    # And the next job goes behind the tenant's newest, as before.
    job_id = sample_jobs.noop.enqueue(db, tenant_id=TENANTS[0])
    assert job_row(db, job_id).vtime == 35_000 + 1


def test_sqlite_plans_claim_and_tail_on_their_indexes(db: Database, backend: str) -> None:
    if backend != "sqlite":
        pytest.skip("the raw SQLite statements")
    with db.engine.connect() as conn:

        def plan(sql: str, params: tuple[Any, ...]) -> str:
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params).all()
            return "\n".join(row[-1] for row in rows)

        claim = plan(_sqlite_hot.CLAIM, ("now", "w", "later", "default", 10))
        assert "USING INDEX ix_jobs_claim" in claim, claim
        start = plan(_sqlite_hot._START_VTIME, ("default", TENANTS[0].hex, "default"))
        assert "ix_jobs_fair" in start and "ix_jobs_claim" in start, start
        assert "TEMP B-TREE" not in start, start


@pytest.mark.parametrize("priority", [PRIORITY_RANGE.start, PRIORITY_RANGE.stop - 1])
def test_a_job_at_either_end_of_the_priority_range_is_claimed(
    db: Database, engine_settings: Any, priority: int
) -> None:
    job_id = enqueue_many(db, [JobSpec(sample_jobs.echo, {"value": priority}, priority=priority)])[
        0
    ]
    with running_worker(db, engine_settings):
        wait_until(lambda: job_row(db, job_id).state == "succeeded")


@pytest.mark.parametrize("priority", [PRIORITY_RANGE.start - 1, PRIORITY_RANGE.stop])
def test_a_priority_outside_32_bits_is_refused_before_anything_is_written(
    db: Database, priority: int
) -> None:
    with pytest.raises(InvalidJobArgs, match="32-bit integer"):
        enqueue_many(db, [JobSpec(sample_jobs.noop, {}, priority=priority)])
    assert states(db) == {}
