"""products: stock within the INTEGER column on every backend

PostgreSQL refuses a stock above 2**31-1 ("integer out of range"); SQLite
stored it. The CHECK makes both refuse it; the API keeps stock at or below
1,000,000,000 (MAX_STOCK), so only units given back by orders come near.
A SQLite database that already holds a larger stock stops here, naming the
products: bring their stock down with a stock adjustment, then migrate again.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STOCK_CEILING = 2**31 - 1


def upgrade() -> None:
    over = (
        op.get_bind()
        .execute(
            sa.text("SELECT tenant_id, sku, stock FROM products WHERE stock > :ceiling"),
            {"ceiling": STOCK_CEILING},
        )
        .all()
    )
    if over:
        named = ", ".join(f"{sku} of tenant {tenant} ({stock})" for tenant, sku, stock in over)
        raise RuntimeError(
            f"stock above {STOCK_CEILING} for {named}: lower it with a stock adjustment first"
        )
    with op.batch_alter_table("products", schema=None) as batch_op:
        batch_op.create_check_constraint(
            op.f("ck_products_stock_within_integer"), f"stock <= {STOCK_CEILING}"
        )


def downgrade() -> None:
    with op.batch_alter_table("products", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_products_stock_within_integer"), type_="check")
