"""Orders placed on the event loop (SQLite, nothing remote) never block it.

While another writer holds the write lock, an order request yields to the
loop and retries, then waits in the thread pool: other requests are served
meanwhile, and the order completes once the lock is free.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager

import httpx
import pytest
from sqlalchemy import event, text

from opsline.db import Database, WriteLockBusy
from tests.orders.conftest import Live


@pytest.fixture
def backend() -> str:
    return "sqlite"


@contextmanager
def _held_by_a_thread(db: Database) -> Iterator[None]:
    """Another thread of this process is in a write transaction."""
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with db.unit_of_work():
            taken.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    taken.wait(10)
    try:
        yield
    finally:
        release.set()
        thread.join()


@contextmanager
def _held_by_another_connection(db: Database) -> Iterator[None]:
    """Another process (here: another connection) holds SQLite's write lock."""
    path = db.engine.url.database
    assert path is not None
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


@pytest.mark.parametrize("holder", [_held_by_a_thread, _held_by_another_connection])
def test_an_order_waiting_for_the_write_lock_leaves_the_server_responsive(
    live: Live, holder: Callable[[Database], AbstractContextManager[None]]
) -> None:
    product = live.product("BUSY", stock=5)
    with ThreadPoolExecutor(1) as pool:
        with holder(live.runtime.db):
            placing: Future[httpx.Response] = pool.submit(live.order, [(product, 2)], "busy-1")
            # Served while the order is still waiting for the lock we hold.
            for _ in range(5):
                assert live.http.get("/health/live").status_code == 200
                assert live.http.get("/api/v1/products", headers=live.owner).status_code == 200
            assert not placing.done()
        response = placing.result(timeout=30)
    assert response.status_code == 201, response.text
    assert live.stock(product) == 3


def test_a_unit_of_work_that_must_not_wait_does_nothing_when_the_lock_is_taken(
    live: Live,
) -> None:
    db = live.runtime.db
    product = live.product("UNTOUCHED", stock=5)
    for holder in (_held_by_a_thread, _held_by_another_connection):
        with holder(db), pytest.raises(WriteLockBusy):
            with db.unit_of_work(wait=False) as uow:
                uow.session.execute(text("UPDATE products SET stock = 0"))  # never reached
    assert live.stock(product) == 5


def test_an_order_attempted_again_reads_its_products_once(live: Live) -> None:
    """While the lock is busy the order is attempted again and again; its read
    of the products (which checks the session) is done once, and so is the
    rate limit's count. (The order before it is of another product: this one
    has not been seen, so it is read.)"""
    db = live.runtime.db
    product = live.product("ONCE", stock=5)
    before = live.order([(live.product("BEFORE", stock=5), 1)], "before")
    reads: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "FROM products" in statement and "auth_sessions" in statement:
            reads.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        with ThreadPoolExecutor(1) as pool:
            with _held_by_another_connection(db):
                placing: Future[httpx.Response] = pool.submit(live.order, [(product, 1)], "once")
                time.sleep(0.3)  # many attempts meanwhile, each refused at BEGIN IMMEDIATE
                assert not placing.done()
            response = placing.result(timeout=30)
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    assert response.status_code == 201, response.text
    assert len(reads) == 1
    remaining = [int(r.headers["ratelimit-remaining"]) for r in (before, response)]
    assert remaining[0] - remaining[1] == 1
    assert live.stock(product) == 4


def test_a_unit_that_must_not_wait_does_not_wait_after_a_rollback_either(live: Live) -> None:
    """Its next transaction (an idempotency key stored with a refusal, after the
    work was undone) finds the lock taken by another process: WriteLockBusy at
    once, not a wait of up to 30 s on the event loop."""
    db = live.runtime.db
    product = live.product("AFTER-ROLLBACK", stock=5)
    started = time.monotonic()
    with db.unit_of_work(wait=False) as uow:
        uow.session.execute(text("UPDATE products SET stock = 4"))
        uow.rollback()
        with _held_by_another_connection(db), pytest.raises(WriteLockBusy):
            uow.session.execute(text("UPDATE products SET stock = 0"))
    assert time.monotonic() - started < 5
    assert live.stock(product) == 5
