"""PgQueuer + PostgreSQL (asyncpg): 2 processes each started with ``pgqueuer.run(...)``.

The queue lives in a database of its own (``_settings.PG_DATABASE``), created on first
use; each pass drops and reinstalls PgQueuer's schema, so every pass starts from empty
tables.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from bench._harness import Recorder, Workers, measure_queue, package_version, python_command

PROCESSES = 2


async def _ensure_database() -> None:
    import asyncpg
    from bench.peers._settings import PG_ADMIN_DSN, PG_DATABASE

    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", PG_DATABASE)
        if not exists:
            await admin.execute(f'CREATE DATABASE "{PG_DATABASE}"')
    finally:
        await admin.close()


def run(n_jobs: int, latency_samples: int) -> dict[str, Any]:
    import asyncpg
    from bench.peers._pgqueuer_worker import BATCH_SIZE
    from bench.peers._settings import PG_DSN, PGQUEUER_ENTRYPOINT
    from pgqueuer import AsyncpgDriver, Queries

    with asyncio.Runner() as loop:
        loop.run(_ensure_database())
        connection = loop.run(asyncpg.connect(PG_DSN))
        try:
            queries = Queries(AsyncpgDriver(connection))

            def reset() -> None:
                async def reinstall() -> None:
                    if await queries.schema_is_installed():
                        await queries.uninstall()
                    await queries.install()

                loop.run(reinstall())

            def enqueue(seq: int) -> None:
                loop.run(queries.enqueue(PGQUEUER_ENTRYPOINT, str(seq).encode()))

            def enqueue_bulk(seqs: range) -> None:
                async def one_by_one() -> None:
                    for seq in seqs:
                        await queries.enqueue(PGQUEUER_ENTRYPOINT, str(seq).encode())

                loop.run(one_by_one())

            def workers(recorder: Recorder) -> Workers:
                cmd = python_command("-m", "bench.peers._pgqueuer_worker")
                return Workers([cmd] * PROCESSES, recorder.env, recorder.dir)

            return measure_queue(
                n_jobs=n_jobs,
                latency_samples=latency_samples,
                reset=reset,
                enqueue=enqueue,
                enqueue_bulk=enqueue_bulk,
                workers=workers,
                workers_desc=(
                    f"{PROCESSES} processes started with pgqueuer.run(...) (batch {BATCH_SIZE})"
                ),
                extra={"version": package_version("pgqueuer")},
            )
        finally:
            with contextlib.suppress(Exception):
                loop.run(connection.close())
