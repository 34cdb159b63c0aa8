"""Prometheus metrics of the engine, per queue.

Counters and the run-time histogram are updated by the process that does the
work. Queue depth and the age of the oldest available job are read from the
database at scrape time by :class:`QueueCollector` (registered once per process
by whoever owns a :class:`Database`, e.g. the API app or a worker).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

import structlog
from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select, type_coerce

from opsline.db import Database, utcnow
from opsline.platform.engine.models import jobs_table, state_is

log = structlog.get_logger(__name__)

JOBS_ENQUEUED = Counter("opsline_jobs_enqueued_total", "Jobs enqueued", ["queue"])
JOBS_SUCCEEDED = Counter("opsline_jobs_succeeded_total", "Jobs that succeeded", ["queue"])
JOBS_FAILED = Counter("opsline_jobs_failed_total", "Failed attempts (retried or dead)", ["queue"])
JOBS_DEAD = Counter("opsline_jobs_dead_total", "Jobs dead after their last attempt", ["queue"])
JOBS_RESCUED = Counter("opsline_jobs_rescued_total", "Jobs rescued from a lost worker")
JOB_RUN_SECONDS = Histogram(
    "opsline_job_run_seconds",
    "Run time of job attempts",
    ["queue"],
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600),
)


class QueueCollector(Collector):
    """Queue depth and oldest-available age, read with one grouped query per scrape."""

    def __init__(self) -> None:
        self._db: weakref.ref[Database] | None = None

    def watch(self, db: Database) -> None:
        self._db = weakref.ref(db)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        db = self._db() if self._db is not None else None
        if db is None:
            return
        depth = GaugeMetricFamily("opsline_queue_depth", "Available jobs", labels=["queue"])
        age = GaugeMetricFamily(
            "opsline_queue_oldest_age_seconds", "Age of the oldest available job", labels=["queue"]
        )
        try:
            rows = _queue_rows(db)
        except Exception:
            # A scrape must not fail because the database is briefly unreachable.
            log.warning("queue_metrics_unavailable", exc_info=True)
            return
        now = utcnow()
        for queue, count, oldest in rows:
            depth.add_metric([queue], count)
            waited = (now - oldest).total_seconds() if oldest is not None else 0.0
            age.add_metric([queue], max(0.0, waited))
        yield depth
        yield age


def _queue_rows(db: Database) -> list[Any]:
    stmt = (
        select(
            jobs_table.c.queue,
            func.count(),
            type_coerce(func.min(jobs_table.c.run_at), jobs_table.c.run_at.type),
        )
        .where(state_is(jobs_table.c.state, "available"))
        .group_by(jobs_table.c.queue)
    )
    with db.read() as session:
        return list(session.execute(stmt).all())


_collector = QueueCollector()
_registered = False


def read_at_scrape() -> list[Collector]:
    """The engine's collectors that read the database when scraped (none before
    :func:`register_queue_collector`)."""
    return [_collector] if _registered else []


def register_queue_collector(db: Database) -> None:
    """Report the depth of ``db``'s queues at scrape time (one database per process)."""
    global _registered
    _collector.watch(db)
    if not _registered:
        REGISTRY.register(_collector)
        _registered = True
