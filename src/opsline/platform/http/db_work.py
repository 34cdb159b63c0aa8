"""Where a request's database work runs: on the event loop whenever it can wait there.

The hop to the thread pool and back costs a busy server more than a short use
case itself (context switches, the GIL handed between threads, and every
round trip to PostgreSQL or Redis hands it over again). So whenever every
round trip of a request can be awaited on the loop (``Settings.units_on_loop``:
no broker, and on SQLite no Redis):

- SQLite: the work runs inline on the loop. A read never waits. A write runs
  only while the write lock is free this instant (``Database.unit_of_work(wait=False)``);
  while another writer holds it (a job, a bulk chunk, another process) the
  request yields to the loop and tries again, and after ``LOCAL_WAIT_SECONDS``
  it waits in the thread pool instead, so the loop never blocks on a lock.
- PostgreSQL: the same code runs on the loop with its statements awaited
  (``Database.on_loop``): a lock wait in the database suspends the request, not
  the loop. Its Redis commands (rate limit, the orders' lock, publishing after
  commit) are awaited there too (``opsline.platform.loop``).

Everywhere else the work runs in the thread pool.

The jobs of workers embedded in the server send their short units here as well
(``JobContext.short_unit``), from their own threads, so that they run on the
loop like a request's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from starlette.concurrency import run_in_threadpool

from opsline.db import Database, WriteLockBusy

T = TypeVar("T")

# Counted on the loop's clock, which also runs through the loop's own backlog
# (32 clients queue ~100 ms of orders there): a short bound would send a busy
# server's writes to the pool after one try, where they then hold the lock.
LOCAL_WAIT_SECONDS = 1.0


async def run_read(db: Database, read: Callable[[], T]) -> T:
    """``read()``, which may also write briefly where it cannot wait (never on SQLite's lock)."""
    if db.settings.units_on_loop:
        if db.is_sqlite:
            return read()
        return await db.on_loop(read)
    return await run_in_threadpool(read)


async def run_write(db: Database, write: Callable[[bool], T]) -> T:
    """``write(wait)``, a unit of work; ``wait=False`` on SQLite's loop (see above)."""
    if not db.settings.units_on_loop:
        return await run_in_threadpool(write, True)
    if not db.is_sqlite:
        return await db.on_loop(write, True)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LOCAL_WAIT_SECONDS
    delay = 0.0002
    while True:
        try:
            return write(False)
        except WriteLockBusy:
            if loop.time() >= deadline:
                break
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.002)
    return await run_in_threadpool(write, True)
