"""payment attempts: one reference per order, one row per order attempt

An order's every payment attempt charges under the same reference, the
gateway's idempotency key: a sweep's retry of a stuck order asks again for the
charge the dead worker may have made instead of making a second one. Attempts
are therefore unique per order and attempt number, no longer per reference.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("payment_attempts", schema=None) as batch_op:
        batch_op.drop_constraint("uq_payment_attempts_tenant_id_reference", type_="unique")
        batch_op.create_unique_constraint(
            "uq_payment_attempts_tenant_id_order_id_attempt", ["tenant_id", "order_id", "attempt"]
        )


def downgrade() -> None:
    # Later attempts share their order's reference: tell them apart again first.
    attempts = sa.table(
        "payment_attempts", sa.column("reference", sa.String), sa.column("attempt", sa.Integer)
    )
    op.execute(
        attempts.update()
        .where(attempts.c.attempt > 1)
        .values(reference=attempts.c.reference + "#" + sa.cast(attempts.c.attempt, sa.String))
    )
    with op.batch_alter_table("payment_attempts", schema=None) as batch_op:
        batch_op.drop_constraint("uq_payment_attempts_tenant_id_order_id_attempt", type_="unique")
        batch_op.create_unique_constraint(
            "uq_payment_attempts_tenant_id_reference", ["tenant_id", "reference"]
        )
