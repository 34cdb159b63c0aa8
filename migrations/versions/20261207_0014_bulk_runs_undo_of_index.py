"""bulk_runs: an index on (tenant_id, undo_of), the look-up of a run's undos

A new undo of a run restores only the records no earlier undo of it restored,
read from those undos' chunk marks and failures; the undos are found by
``undo_of``. That look-up went through (tenant_id, status), every cancelled
or failed run of the tenant; it now seeks the run's undos.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("bulk_runs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_bulk_runs_tenant_id_undo_of"), ["tenant_id", "undo_of"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("bulk_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_bulk_runs_tenant_id_undo_of"))
