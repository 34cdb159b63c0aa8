"""orders: a partial index of PENDING orders by updated_at

The sweeper looks for PENDING orders idle past the timeout whose payment job
died or was cancelled; without this index that look-up read the whole table
every minute.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING_ONLY = sa.text("status = 'PENDING'")


def upgrade() -> None:
    op.create_index(
        "ix_orders_pending",
        "orders",
        ["updated_at"],
        sqlite_where=PENDING_ONLY,
        postgresql_where=PENDING_ONLY,
    )


def downgrade() -> None:
    op.drop_index("ix_orders_pending", table_name="orders")
