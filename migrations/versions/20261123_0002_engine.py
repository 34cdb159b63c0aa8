"""engine: jobs, job errors, event log, batches, leases, periodic state

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
PENDING = "state IN ('scheduled', 'available', 'running', 'retryable')"


NOTIFY_FUNCTION = """
CREATE FUNCTION opsline_jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('opsline_jobs', '');
    RETURN NULL;
END
$$
"""


def _where(condition: str) -> dict[str, sa.TextClause]:
    return {"sqlite_where": sa.text(condition), "postgresql_where": sa.text(condition)}


def _ts(name: str, nullable: bool = False) -> sa.Column[sa.DateTime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("queue", sa.String(length=50), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("vtime", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        _ts("run_at"),
        _ts("created_at"),
        _ts("attempted_at", nullable=True),
        _ts("finished_at", nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        _ts("lease_expires_at", nullable=True),
        sa.Column("unique_key", sa.String(length=400), nullable=True),
        sa.Column("concurrency_key", sa.String(length=200), nullable=True),
        sa.Column("concurrency_limit", sa.Integer(), nullable=True),
        sa.Column("batch_id", sa.Uuid(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(
        "ix_jobs_claim",
        "jobs",
        ["queue", "priority", "vtime", "id"],
        **_where("state = 'available'"),
    )
    op.create_index(
        "ix_jobs_fair", "jobs", ["queue", "tenant_id", "vtime"], **_where("state = 'available'")
    )
    op.create_index(
        "ix_jobs_due", "jobs", ["run_at"], **_where("state IN ('scheduled', 'retryable')")
    )
    op.create_index("ix_jobs_lease", "jobs", ["lease_expires_at"], **_where("state = 'running'"))
    op.create_index(
        "uq_jobs_unique_key",
        "jobs",
        ["unique_key"],
        unique=True,
        **_where(f"unique_key IS NOT NULL AND {PENDING}"),
    )
    op.create_index(
        "ix_jobs_concurrency",
        "jobs",
        ["concurrency_key"],
        **_where("state = 'running' AND concurrency_key IS NOT NULL"),
    )
    op.create_index("ix_jobs_tenant_id_id", "jobs", ["tenant_id", "id"])
    op.create_index(
        "ix_jobs_finished", "jobs", ["state", "finished_at"], **_where("finished_at IS NOT NULL")
    )
    op.create_index("ix_jobs_batch_id", "jobs", ["batch_id"], **_where("batch_id IS NOT NULL"))

    if op.get_bind().dialect.name == "postgresql":
        # Wake LISTENing workers on every INSERT into jobs, delivered at commit,
        # without a round trip from the enqueuing client.
        op.execute(NOTIFY_FUNCTION)
        op.execute(
            "CREATE TRIGGER jobs_notify AFTER INSERT ON jobs"
            " FOR EACH STATEMENT EXECUTE FUNCTION opsline_jobs_notify()"
        )

    op.create_table(
        "job_errors",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("error_type", sa.String(length=200), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("traceback", sa.Text(), nullable=False),
        sa.Column("worker", sa.String(length=64), nullable=True),
        _ts("failed_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_errors")),
    )
    op.create_index(op.f("ix_job_errors_job_id"), "job_errors", ["job_id"])
    op.create_index(op.f("ix_job_errors_tenant_id"), "job_errors", ["tenant_id"])

    op.create_table(
        "events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("type", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        _ts("occurred_at"),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index("ix_events_tenant_id_occurred_at", "events", ["tenant_id", "occurred_at"])
    op.create_index("ix_events_type_occurred_at", "events", ["type", "occurred_at"])

    op.create_table(
        "job_batches",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("succeeded", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("cancelled", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("on_success", sa.String(length=200), nullable=True),
        sa.Column("on_failure", sa.String(length=200), nullable=True),
        sa.Column("on_complete", sa.String(length=200), nullable=True),
        sa.Column("callback_args", sa.JSON(), nullable=False),
        _ts("created_at"),
        _ts("finished_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_batches")),
    )
    op.create_index(op.f("ix_job_batches_tenant_id"), "job_batches", ["tenant_id"])

    op.create_table(
        "engine_leases",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        _ts("expires_at"),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_engine_leases")),
    )
    op.create_table(
        "periodic_jobs",
        sa.Column("name", sa.String(length=200), nullable=False),
        _ts("last_slot_at"),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_periodic_jobs")),
    )


def downgrade() -> None:
    # Dropping a table drops its indexes on both backends.
    for table in ("periodic_jobs", "engine_leases", "job_batches", "events", "job_errors", "jobs"):
        op.drop_table(table)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS opsline_jobs_notify()")
