"""Short writes on the event loop when nothing they do can wait on the network.

With SQLite and nothing remote (``Settings.all_in_process``), a short write use
case is a millisecond of in-process work: less than the hop to the thread pool
and back costs on a busy server (context switches, and the GIL handed between
threads), and writes run from the loop never queue on the process's write lock.
:func:`run_write` runs one there only while the write lock is free this instant
(``Database.unit_of_work(wait=False)``); while another writer holds it (a job,
a bulk chunk, another process) the request yields to the loop and tries again,
and after ``LOCAL_WAIT_SECONDS`` it waits in the thread pool instead, so the
loop never blocks on a lock. Everywhere else the write runs in the thread pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from starlette.concurrency import run_in_threadpool

from opsline.db import WriteLockBusy
from opsline.settings import Settings

T = TypeVar("T")

# Counted on the loop's clock, which also runs through the loop's own backlog
# (32 clients queue ~100 ms of orders there): a short bound would send a busy
# server's writes to the pool after one try, where they then hold the lock.
LOCAL_WAIT_SECONDS = 1.0


async def run_write(settings: Settings, write: Callable[[bool], T]) -> T:
    """``write(wait)``: on the loop with ``wait=False`` when it may, else in the pool."""
    if settings.all_in_process:
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
