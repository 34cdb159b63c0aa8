"""Metrics per queue and the pruning of old finished jobs."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY, generate_latest
from sqlalchemy import select, text, update

from opsline.db import Database, utcnow
from opsline.platform.engine._autovacuum import autovacuum_keeps_stats, warn_if_autovacuum_off
from opsline.platform.engine.batches import create_batch
from opsline.platform.engine.context import JobContext
from opsline.platform.engine.enqueue import JobSpec
from opsline.platform.engine.jobs import prune_finished_jobs
from opsline.platform.engine.metrics import register_queue_collector
from opsline.platform.engine.models import batches_table, jobs_table
from opsline.platform.observability.logging import configure_logging
from opsline.settings import Settings
from tests.platform.engine import sample_jobs
from tests.platform.engine.helpers import job_row, running_worker, states, wait_until

J = jobs_table.c


def _sample(name: str, queue: str) -> float:
    value = REGISTRY.get_sample_value(name, {"queue": queue})
    return value or 0.0


def test_metrics_count_jobs_per_queue(db: Database, engine_settings: Settings) -> None:
    before = _sample("opsline_jobs_succeeded_total", "default")
    job_id = sample_jobs.echo.enqueue(db, value=1)
    sample_jobs.echo.enqueue(db, value=2, delay=3600)
    register_queue_collector(db)
    sample_jobs.noop.enqueue(db)
    assert _sample("opsline_queue_depth", "default") == 2
    with running_worker(db, engine_settings):
        wait_until(lambda: job_row(db, job_id).state == "succeeded")
        wait_until(lambda: _sample("opsline_jobs_succeeded_total", "default") >= before + 2)
    text = generate_latest().decode()
    assert 'opsline_job_run_seconds_count{queue="default"}' in text
    assert _sample("opsline_queue_depth", "default") == 0


def test_prune_deletes_old_finished_jobs_only(db: Database, engine_settings: Settings) -> None:
    old = sample_jobs.echo.enqueue(db, value=1)
    recent = sample_jobs.echo.enqueue(db, value=2)
    dead = sample_jobs.echo.enqueue(db, value=3)
    long_ago = utcnow() - timedelta(days=30)
    with db.unit_of_work() as uow:
        uow.session.execute(
            update(jobs_table).where(J.id == old).values(state="succeeded", finished_at=long_ago)
        )
        uow.session.execute(
            update(jobs_table).where(J.id == recent).values(state="succeeded", finished_at=utcnow())
        )
        uow.session.execute(
            update(jobs_table).where(J.id == dead).values(state="dead", finished_at=long_ago)
        )
    ctx = JobContext(
        job_id=0,
        name="engine.prune_finished_jobs",
        queue="low",
        tenant_id=None,
        attempt=1,
        max_attempts=3,
        batch_id=None,
        db=db,
        settings=engine_settings,
    )
    with db.unit_of_work() as uow:
        batches = {
            when: create_batch(uow, [], name=f"finished {when}") for when in ("long ago", "now")
        }
        running = create_batch(uow, [JobSpec("tests.noop")], name="still running")
        uow.session.execute(
            update(batches_table)
            .where(batches_table.c.id == batches["long ago"])
            .values(finished_at=long_ago)
        )
    prune_finished_jobs(ctx)
    assert states(db) == {"succeeded": 1, "dead": 1, "available": 1}
    with db.read() as session:
        kept = set(session.execute(select(batches_table.c.id)).scalars())
    assert kept == {batches["now"], running}


@pytest.fixture
def logs_configured(engine_settings: Settings) -> None:
    # As every runtime does; before the test runs, since it replaces the root's
    # handlers (pytest's capturing handler is added for the test's call).
    configure_logging(engine_settings.log_format, "WARNING")


@pytest.mark.usefixtures("logs_configured")
def test_a_worker_warns_when_autovacuum_will_not_analyse_the_jobs_table(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    keeps = autovacuum_keeps_stats(db)
    if db.is_sqlite:
        assert keeps is None
    else:
        with db.engine.connect() as conn:
            on = conn.execute(text("SHOW autovacuum")).scalar_one() == "on"
            counts = conn.execute(text("SHOW track_counts")).scalar_one() == "on"
        assert keeps is (on and counts)
    with caplog.at_level(logging.WARNING, logger="opsline.engine"):
        warn_if_autovacuum_off(db)
    warned = [
        r.msg
        for r in caplog.records
        if r.name == "opsline.engine" and r.msg["event"] == "postgres_autovacuum_off"  # type: ignore[index]
    ]
    assert len(warned) == (1 if keeps is False else 0)
    if warned:
        assert "ANALYZE jobs" in warned[0]["fix"]  # type: ignore[index]
