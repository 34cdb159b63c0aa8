"""One PgQueuer worker process: ``pgqueuer.run(factory)`` with its defaults (batch 10).

Started twice by ``pgqueuer_pg.run``. pgqueuer 1.6.0's ``pgq run`` command fails at
start-up, so the worker calls the documented ``pgqueuer.run()`` function instead.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pgqueuer
from bench._harness import record
from bench.peers._settings import PG_DSN, PGQUEUER_ENTRYPOINT
from pgqueuer import AsyncpgDriver, Job, PgQueuer

BATCH_SIZE = 10


@asynccontextmanager
async def factory() -> AsyncIterator[PgQueuer]:
    connection = await asyncpg.connect(PG_DSN)
    try:
        pgq = PgQueuer(AsyncpgDriver(connection))

        @pgq.entrypoint(PGQUEUER_ENTRYPOINT)
        async def noop(job: Job) -> None:
            record(int(job.payload or b"0"))

        yield pgq
    finally:
        await connection.close()


def main() -> int:
    asyncio.run(pgqueuer.run(factory, batch_size=BATCH_SIZE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
