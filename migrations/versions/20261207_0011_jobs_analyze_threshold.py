"""jobs: re-analysed after every 1,000 changed rows on PostgreSQL

By default autovacuum re-analyses a table once 10% of its rows changed. A jobs
table grown large with finished rows can take a backlog of waiting jobs
without passing that mark; its statistics then still say that no job waits,
and the enqueue's look-up of a tenant's newest waiting job is planned as a
scan and sort of every waiting job instead of one step down ix_jobs_fair.
SQLite keeps no such statistics: nothing to do there.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE jobs SET "
            "(autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 1000)"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE jobs RESET (autovacuum_analyze_scale_factor, autovacuum_analyze_threshold)"
        )
