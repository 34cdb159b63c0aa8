"""Fixtures shared by every suite: settings, a fresh database, a runtime, an HTTP client.

Database tests run on SQLite, and again on PostgreSQL when
``OPSLINE_TEST_DATABASE_URL`` is set. With ``OPSLINE_REQUIRE_SERVICES=1`` (CI) a
missing or unreachable PostgreSQL or Redis fails the run instead of skipping.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

# Rich sizes its console when the CLI module is imported: make tables wide
# enough that ids are never wrapped in command output under test.
os.environ.setdefault("COLUMNS", "200")

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from opsline.api import create_app
from opsline.bootstrap import bootstrap
from opsline.platform.runtime import Runtime
from opsline.settings import Settings
from tests._databases import (
    PG_ENV,
    REDIS_ENV,
    TemplateDatabases,
    base_settings,
    pg_admin,
    services_required,
)

_SKIPPED_SERVICES: set[str] = set()


def _service_unavailable(name: str, reason: str) -> None:
    if services_required():
        pytest.fail(f"{name} is required (OPSLINE_REQUIRE_SERVICES=1) but {reason}")
    _SKIPPED_SERVICES.add(f"{name}: {reason}")
    pytest.skip(f"{name} suite skipped: {reason}")


@pytest.fixture(scope="session")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemplateDatabases]:
    manager = TemplateDatabases(tmp_path_factory.mktemp("templates"))
    yield manager
    manager.drop(os.environ.get(PG_ENV))


@pytest.fixture(scope="session")
def pg_url() -> str | None:
    return os.environ.get(PG_ENV) or None


def _require_pg(url: str | None) -> str:
    if not url:
        _service_unavailable("PostgreSQL", f"{PG_ENV} is not set")
    assert url is not None
    try:
        with pg_admin(url):
            pass
    except Exception as exc:
        _service_unavailable("PostgreSQL", f"cannot connect ({type(exc).__name__})")
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server_url(backend: str, pg_url: str | None) -> str | None:
    """The PostgreSQL server of a ``postgresql`` test (skipped, or failed where services
    are required, without one); None on SQLite."""
    return _require_pg(pg_url) if backend == "postgresql" else None


@pytest.fixture
def database_url(
    backend: str, templates: TemplateDatabases, tmp_path: Path, server_url: str | None
) -> Iterator[str | None]:
    with templates.fresh(backend, tmp_path / "var", server_url) as fresh:
        yield fresh


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    """Override in a module to change settings for its tests."""
    return {}


@pytest.fixture
def settings(
    database_url: str | None, tmp_path: Path, settings_overrides: dict[str, object]
) -> Settings:
    return base_settings(tmp_path / "var", database_url=database_url, **settings_overrides)


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    runtime = bootstrap(settings)
    yield runtime
    runtime.close()


@pytest.fixture
def app_client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime=runtime), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def cli(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A runner of ``opsline`` commands against the test's database."""
    monkeypatch.setenv("OPSLINE_VAR_DIR", str(settings.var_dir))
    if settings.database_url:
        monkeypatch.setenv("OPSLINE_DATABASE_URL", settings.database_url)
    assert settings.secret_key is not None
    monkeypatch.setenv("OPSLINE_SECRET_KEY", settings.secret_key.get_secret_value())
    monkeypatch.setenv("OPSLINE_ARGON2_TIME_COST", "1")
    monkeypatch.setenv("OPSLINE_ARGON2_MEMORY_KIB", "1024")
    monkeypatch.setenv("COLUMNS", "200")  # Rich wraps tables at the terminal's width
    return CliRunner()


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get(REDIS_ENV)
    if not url:
        _service_unavailable("Redis", f"{REDIS_ENV} is not set")
    assert url is not None
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as exc:
        _service_unavailable("Redis", f"cannot connect ({type(exc).__name__})")
    return url


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _SKIPPED_SERVICES:
        terminalreporter.section("service suites skipped")
        for line in sorted(_SKIPPED_SERVICES):
            terminalreporter.write_line(f"SKIPPED {line}")


@pytest.fixture
def broker_url() -> str:
    url = os.environ.get("OPSLINE_TEST_BROKER_URL")
    if not url:
        _service_unavailable("RabbitMQ", "OPSLINE_TEST_BROKER_URL is not set")
    assert url is not None
    return url
