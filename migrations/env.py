"""Alembic environment: one metadata (opsline.models), URL handed in by opsline.migrate."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from opsline.db import UtcDateTime
from opsline.models import metadata

config = context.config
url = config.attributes.get("opsline_url") or config.get_main_option("sqlalchemy.url")


def render_item(kind: str, obj: object, autogen_context: object) -> str | bool:
    # Our UTC type decorator is a plain timezone-aware timestamp in the schema.
    if kind == "type" and isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run() -> None:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
            render_item=render_item,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run()
