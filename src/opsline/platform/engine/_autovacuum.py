"""A warning at worker start when PostgreSQL will not keep the jobs table's
statistics fresh.

The claim and the enqueue's tail look-up are planned from those statistics
(see ``JOBS_STORAGE`` in :mod:`.models`). With autovacuum off nothing analyses
the table: a backlog that grew since the last ANALYZE is planned as if no job
waited, and every enqueue then sorts the whole backlog. The queue still works,
slowly; the warning says what to do.
"""

from __future__ import annotations

import structlog
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from opsline.db import Database
from opsline.platform.engine._engines import hot_engine

log = structlog.get_logger("opsline.engine")

_SETTINGS = text(
    "SELECT current_setting('autovacuum') = 'on' AND current_setting('track_counts') = 'on'"
)


def autovacuum_keeps_stats(db: Database) -> bool | None:
    """Whether autovacuum will analyse the jobs table (None: SQLite, or not known)."""
    if db.is_sqlite:
        return None
    try:
        with hot_engine(db).connect() as conn:
            return bool(conn.execute(_SETTINGS).scalar_one())
    except SQLAlchemyError:
        return None  # the worker's own loop reports an unreachable database


def warn_if_autovacuum_off(db: Database) -> None:
    if autovacuum_keeps_stats(db) is False:
        log.warning(
            "postgres_autovacuum_off",
            consequence="the jobs table is never analysed: enqueues slow down as a backlog grows",
            fix="turn autovacuum (and track_counts) on, or run ANALYZE jobs on a schedule",
        )
