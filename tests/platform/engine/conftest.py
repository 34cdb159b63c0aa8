"""Fixtures of the engine suite, on top of the shared ``settings`` fixture.

Every test runs on SQLite and on PostgreSQL (``OPSLINE_TEST_DATABASE_URL``),
each with a fresh migrated database: the engine needs real commits across
connections and processes, so nothing is rolled back or mocked.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from opsline.db import Database
from opsline.settings import Settings
from tests.platform.engine import sample_jobs


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {
        "job_lease_seconds": 5.0,
        "job_poll_seconds": 0.2,
        "job_shutdown_grace_seconds": 5.0,
        "log_level": "WARNING",
    }


@pytest.fixture
def engine_settings(settings: Settings) -> Settings:
    return settings


@pytest.fixture
def db(engine_settings: Settings) -> Iterator[Database]:
    database = Database(engine_settings)
    yield database
    database.dispose()


@pytest.fixture(autouse=True)
def _clear_calls() -> Iterator[None]:
    sample_jobs.CALLS.clear()
    yield
    sample_jobs.CALLS.clear()
