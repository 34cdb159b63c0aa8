"""statement guards: a check inside a statement that fails the whole statement

``opsline_expect(ok, guard)`` returns true, or raises SQLSTATE OL001 with the
guard's number as the error's detail. A unit of work that sends its held-back
writes as one statement checks their row counts with it (an order's stock
decrement, its idempotency key's claim): a failed check rolls the statement
back, and the unit of work maps the guard's number to its error.
PostgreSQL only; SQLite runs held-back writes at once and checks in Python.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EXPECT_FUNCTION = """
CREATE FUNCTION opsline_expect(ok boolean, guard integer) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION 'opsline guard % failed', guard
            USING ERRCODE = 'OL001', DETAIL = guard::text;
    END IF;
    RETURN true;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(EXPECT_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS opsline_expect(boolean, integer)")
