"""bulk_runs: the digest of the confirmation token a run used, unique per tenant

A preview's confirmation token confirmed any number of runs until it expired:
one token, three POSTs, the change applied three times. The run now stores the
token's SHA-256 in the transaction that creates it, under a unique index, so a
second run with the same token cannot commit. Runs made before keep NULL.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("bulk_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("confirmation_digest", sa.String(length=64), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_bulk_runs_tenant_id_confirmation_digest"),
            ["tenant_id", "confirmation_digest"],
            unique=True,
        )


def downgrade() -> None:
    with op.batch_alter_table("bulk_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_bulk_runs_tenant_id_confirmation_digest"))
        batch_op.drop_column("confirmation_digest")
