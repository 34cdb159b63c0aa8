"""Migrations: empty -> head -> base -> head, and the migrated schema equals the models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from opsline import migrate
from opsline.models import metadata
from opsline.settings import Settings
from tests._databases import base_settings, pg_admin, pg_url


@pytest.fixture
def empty_settings(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Settings]:
    if backend == "sqlite":
        (tmp_path / "var").mkdir()
        yield base_settings(tmp_path / "var")
        return
    url = request.getfixturevalue("database_url")  # a fresh, migrated database ...
    settings = base_settings(tmp_path / "var", database_url=url)
    migrate.downgrade(settings, "base")  # ... taken back to empty
    yield settings


def _tables(settings: Settings) -> set[str]:
    engine = create_engine(settings.sqlalchemy_url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(empty_settings: Settings) -> None:
    assert _tables(empty_settings) == set()
    migrate.upgrade(empty_settings)
    assert _tables(empty_settings) == set(metadata.tables)
    assert migrate.current_heads(empty_settings) == migrate.script_heads(empty_settings)
    migrate.downgrade(empty_settings, "base")
    assert _tables(empty_settings) == set()
    migrate.upgrade(empty_settings)
    assert _tables(empty_settings) == set(metadata.tables)


def test_migrated_schema_equals_the_models(empty_settings: Settings) -> None:
    migrate.upgrade(empty_settings)
    engine = create_engine(empty_settings.sqlalchemy_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            diff = compare_metadata(context, metadata)
    finally:
        engine.dispose()
    assert diff == [], f"models and migrations disagree; write a migration for: {diff}"


def test_migrated_storage_parameters_equal_the_models(empty_settings: Settings) -> None:
    # compare_metadata leaves storage parameters (WITH (...)) out; checked here.
    if empty_settings.is_sqlite:
        pytest.skip("storage parameters are PostgreSQL's")
    migrate.upgrade(empty_settings)
    engine = create_engine(empty_settings.sqlalchemy_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT relname, reloptions FROM pg_class WHERE relkind = 'r'"
                    " AND relnamespace = 'public'::regnamespace AND reloptions IS NOT NULL"
                )
            ).all()
    finally:
        engine.dispose()
    migrated = {name: sorted(options) for name, options in rows}
    declared = {
        name: sorted(f"{k}={v}" for k, v in table.dialect_options["postgresql"]["with"].items())
        for name, table in metadata.tables.items()
        if table.dialect_options["postgresql"]["with"]
    }
    assert migrated == declared
    assert "autovacuum_analyze_threshold=1000" in migrated["jobs"]


def test_pg_helpers_are_importable() -> None:
    # Keeps the helpers used by the PostgreSQL fixtures honest on a laptop too.
    assert callable(pg_admin) and pg_url("postgresql://u@h/x", "y").endswith("/y")
