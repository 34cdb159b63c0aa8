"""Where the peers' servers are; every one is on this machine (127.0.0.1)."""

from __future__ import annotations

import os

RABBITMQ_URL = os.environ.get("BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
# PgQueuer gets a database of its own so that installing and dropping its tables never
# touches the database the test suites use; it is created from the admin DSN if missing.
PG_ADMIN_DSN = os.environ.get("BENCH_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/test")
PG_DATABASE = os.environ.get("BENCH_PG_DATABASE", "opsline_bench_pgqueuer")
PG_DSN = os.environ.get("BENCH_PG_DSN", f"postgresql://postgres@127.0.0.1:5432/{PG_DATABASE}")

DRAMATIQ_QUEUE = "opsline_bench_dramatiq"
CELERY_QUEUE = "opsline_bench_celery"
PGQUEUER_ENTRYPOINT = "opsline_bench_noop"
