"""Fresh, migrated databases for tests: one per test, never shared.

Each test gets its own database copied from a template migrated once per test
process by Alembic (migrations are the only way a schema is made, in tests
too): on SQLite a copy of the template file, on PostgreSQL
``CREATE DATABASE ... TEMPLATE``. Nothing depends on what an earlier test or run
left behind.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from opsline import migrate
from opsline.settings import Settings

PG_ENV = "OPSLINE_TEST_DATABASE_URL"
REDIS_ENV = "OPSLINE_TEST_REDIS_URL"
REQUIRE_ENV = "OPSLINE_REQUIRE_SERVICES"


def services_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") in ("1", "true", "yes")


def base_settings(var_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "env": "test",
        "var_dir": var_dir,
        "secret_key": "test-secret-key-" + "x" * 32,
        "argon2_time_cost": 1,
        "argon2_memory_kib": 1024,
        "embedded_workers": 0,
        "embedded_scheduler": False,
        "rate_limit_api": "100000/minute",
        "rate_limit_auth": "100000/minute",
        "rate_limit_failed_login": "100000/minute",
        "log_format": "json",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def _pg_conninfo(url: str, dbname: str | None = None) -> str:
    parsed = make_url(url)
    parts = {
        "host": parsed.host or "127.0.0.1",
        "port": parsed.port or 5432,
        "user": parsed.username or "postgres",
        "dbname": dbname or parsed.database or "test",
    }
    if parsed.password:
        parts["password"] = parsed.password
    return " ".join(f"{k}={v}" for k, v in parts.items())


def pg_url(url: str, dbname: str) -> str:
    parsed = make_url(url).set(drivername="postgresql+psycopg", database=dbname)
    return parsed.render_as_string(hide_password=False)


def pg_admin(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(_pg_conninfo(url), autocommit=True, connect_timeout=3)


class TemplateDatabases:
    """Migrated templates, made lazily once per test process and backend."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._sqlite: Path | None = None
        self._pg: str | None = None
        self.worker = os.environ.get("PYTEST_XDIST_WORKER", "main")

    def sqlite_template(self) -> Path:
        if self._sqlite is None:
            var = self.root / "sqlite-template"
            migrate.upgrade(base_settings(var))
            self._sqlite = var / "opsline.db"
        return self._sqlite

    def pg_template(self, url: str) -> str:
        if self._pg is None:
            name = f"opsline_tpl_{self.worker}_{uuid.uuid4().hex[:8]}"
            with pg_admin(url) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            migrate.upgrade(base_settings(self.root, database_url=pg_url(url, name)))
            self._pg = name
        return self._pg

    def drop(self, url: str | None) -> None:
        if self._pg and url:
            with pg_admin(url) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self._pg}" WITH (FORCE)')

    @contextmanager
    def fresh(self, backend: str, var_dir: Path, url: str | None) -> Iterator[str | None]:
        """Yield a database URL (None means the default SQLite file in var_dir)."""
        if backend == "sqlite":
            var_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.sqlite_template(), var_dir / "opsline.db")
            yield None
            return
        assert url is not None
        template = self.pg_template(url)
        name = f"opsline_t_{uuid.uuid4().hex[:12]}"
        with pg_admin(url) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        try:
            yield pg_url(url, name)
        finally:
            with pg_admin(url) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
