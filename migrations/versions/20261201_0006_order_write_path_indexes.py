"""order write path: fewer index pages per order

An order wrote 31 pages (SQLite WAL frames) per commit. Two tenant_id indexes
duplicated the prefix of a unique constraint's index, and the sweeper's index
held every order although it only looks for PROCESSING ones; it is now partial.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PROCESSING_ONLY = sa.text("status = 'PROCESSING'")


def upgrade() -> None:
    op.drop_index("ix_order_lines_tenant_id", table_name="order_lines")
    op.drop_index("ix_idempotency_keys_tenant_id", table_name="idempotency_keys")
    op.drop_index("ix_orders_status_processing_started_at", table_name="orders")
    op.create_index(
        "ix_orders_processing",
        "orders",
        ["processing_started_at"],
        sqlite_where=PROCESSING_ONLY,
        postgresql_where=PROCESSING_ONLY,
    )


def downgrade() -> None:
    op.drop_index("ix_orders_processing", table_name="orders")
    op.create_index(
        "ix_orders_status_processing_started_at", "orders", ["status", "processing_started_at"]
    )
    op.create_index("ix_idempotency_keys_tenant_id", "idempotency_keys", ["tenant_id"])
    op.create_index("ix_order_lines_tenant_id", "order_lines", ["tenant_id"])
