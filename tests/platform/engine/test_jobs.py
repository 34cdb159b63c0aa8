"""Jobs: enqueue in the unit of work, run, retry, die, cancel, time out."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from opsline.db import Database
from opsline.platform.engine.enqueue import JobSpec, enqueue, enqueue_many
from opsline.platform.engine.errors import InvalidJobArgs, UnknownJob
from opsline.platform.engine.models import job_errors_table, jobs_table
from opsline.settings import Settings
from tests.platform.engine import sample_jobs
from tests.platform.engine.helpers import all_final, job_row, running_worker, states, wait_until

J = jobs_table.c


def test_enqueue_in_rolled_back_unit_of_work_leaves_no_job(db: Database) -> None:
    with pytest.raises(RuntimeError):
        _then_fail(db)
    assert states(db) == {}


def test_enqueue_on_database_commits_available_job(db: Database) -> None:
    tenant = uuid.uuid4()
    job_id = sample_jobs.echo.enqueue(db, tenant_id=tenant, value=7)
    row = job_row(db, job_id)
    assert (row.state, row.queue, row.tenant_id, row.args) == (
        "available",
        "default",
        tenant,
        {"value": 7, "note": ""},
    )


def test_bad_arguments_are_rejected_at_enqueue(db: Database) -> None:
    with pytest.raises(InvalidJobArgs) as caught:
        enqueue(db, "tests.echo", {"value": "not a number"})
    assert caught.value.extra["errors"][0]["loc"] == ["value"]
    with pytest.raises(InvalidJobArgs):
        enqueue(db, "tests.echo", {"value": 1, "unexpected": True})
    with pytest.raises(UnknownJob):
        enqueue(db, "tests.nope", {})
    assert states(db) == {}


def test_worker_runs_job_and_marks_it_succeeded(db: Database, engine_settings: Settings) -> None:
    tenant = uuid.uuid4()
    job_id = sample_jobs.echo.enqueue(db, tenant_id=tenant, value=3)
    with running_worker(db, engine_settings):
        wait_until(lambda: job_row(db, job_id).state == "succeeded")
    assert sample_jobs.CALLS["echo"] == [(3, tenant, 1)]
    row = job_row(db, job_id)
    assert row.lease_owner is None
    assert row.finished_at is not None


def test_failing_job_retries_with_backoff_then_succeeds(
    db: Database, engine_settings: Settings
) -> None:
    job_id = sample_jobs.flaky.enqueue(db, fail_times=2, key="f")
    with running_worker(db, engine_settings):
        wait_until(lambda: job_row(db, job_id).state == "succeeded")
    assert sample_jobs.CALLS["f"] == [1, 2, 3]
    with db.read() as session:
        errors = session.execute(
            select(job_errors_table.c.attempt, job_errors_table.c.error_type)
            .where(job_errors_table.c.job_id == job_id)
            .order_by(job_errors_table.c.attempt)
        ).all()
    assert [tuple(e) for e in errors] == [(1, "ValueError"), (2, "ValueError")]


def test_job_is_dead_after_its_last_attempt(db: Database, engine_settings: Settings) -> None:
    job_id = sample_jobs.flaky.enqueue(db, fail_times=99, key="d")
    with running_worker(db, engine_settings):
        wait_until(lambda: job_row(db, job_id).state == "dead")
    row = job_row(db, job_id)
    assert row.attempt == 3
    assert row.last_error.startswith("ValueError: attempt 3 fails")
    with db.read() as session:
        tracebacks = (
            session.execute(
                select(job_errors_table.c.traceback).where(job_errors_table.c.job_id == job_id)
            )
            .scalars()
            .all()
        )
    assert len(tracebacks) == 3
    assert all("Traceback" in tb for tb in tracebacks)


def test_retry_exception_reschedules_without_policy(
    db: Database, engine_settings: Settings
) -> None:
    job_id = enqueue(db, "tests.retry_later")
    with running_worker(db, engine_settings):
        wait_until(lambda: job_row(db, job_id).state == "succeeded")
    assert sample_jobs.CALLS["retry_later"] == [1, 2]


def test_delayed_job_waits_for_its_run_at(db: Database, engine_settings: Settings) -> None:
    later = sample_jobs.echo.enqueue(db, delay=3600, value=1)
    soon = sample_jobs.echo.enqueue(db, delay=0.05, value=2)
    assert job_row(db, soon).state == "scheduled"
    with running_worker(db, engine_settings):
        wait_until(lambda: job_row(db, soon).state == "succeeded")
    assert job_row(db, later).state == "scheduled"


def test_unique_job_returns_existing_pending_job(db: Database) -> None:
    order = uuid.uuid4()
    first = sample_jobs.unique_job.enqueue(db, order_id=order)
    second = sample_jobs.unique_job.enqueue(db, order_id=order)
    other = sample_jobs.unique_job.enqueue(db, order_id=uuid.uuid4())
    assert first == second != other
    assert states(db) == {"available": 2}


def test_unique_key_is_free_again_once_the_job_finished(
    db: Database, engine_settings: Settings
) -> None:
    order = uuid.uuid4()
    first = sample_jobs.unique_job.enqueue(db, order_id=order)
    with running_worker(db, engine_settings):
        wait_until(lambda: job_row(db, first).state == "succeeded")
    assert sample_jobs.unique_job.enqueue(db, order_id=order) != first


def test_enqueue_many_keeps_order_and_tenants(db: Database, engine_settings: Settings) -> None:
    tenant = uuid.uuid4()
    ids = enqueue_many(
        db, [JobSpec("tests.echo", {"value": n}, tenant_id=tenant) for n in range(50)]
    )
    assert ids == sorted(ids)
    with running_worker(db, engine_settings, concurrency=1):
        wait_until(lambda: all_final(db))
    assert sorted(v for v, _, _ in sample_jobs.CALLS["echo"]) == list(range(50))
    with db.read() as session:
        assert session.execute(select(func.count()).where(J.state == "succeeded")).scalar() == 50


def _then_fail(db: Database) -> None:
    with db.unit_of_work() as uow:
        sample_jobs.echo.enqueue(uow, value=1)
        raise RuntimeError("business rule failed")
