"""Database work on the event loop (PostgreSQL), and its pool's ping of idle connections."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import psycopg
import pytest
from sqlalchemy import Column, Integer, MetaData, Table, select, text
from sqlalchemy.exc import DBAPIError

import opsline._connections
from opsline.db import Database, values_insert
from opsline.platform.runtime import Runtime


@pytest.fixture
def db(runtime: Runtime) -> Database:
    if runtime.db.is_sqlite:
        pytest.skip("on_loop and the idle ping are PostgreSQL's")
    with runtime.db.unit_of_work() as uow:
        uow.session.execute(text("CREATE TABLE scratch_loop (id INTEGER PRIMARY KEY, n INTEGER)"))
        uow.session.execute(text("INSERT INTO scratch_loop VALUES (1, 0)"))
    return runtime.db


def _value(db: Database) -> int:
    with db.read() as session:
        return int(session.execute(text("SELECT n FROM scratch_loop WHERE id = 1")).scalar_one())


def test_on_loop_runs_blocking_code_on_the_loop_thread_with_an_asyncio_connection(
    db: Database,
) -> None:
    seen: dict[str, Any] = {}

    def work() -> int:
        seen["thread"] = threading.get_ident()
        with db.unit_of_work() as uow:
            seen["driver"] = type(uow.connection.connection.driver_connection).__name__
            uow.session.execute(text("UPDATE scratch_loop SET n = n + 1 WHERE id = 1"))
        with db.read_connection() as conn:
            return int(conn.execute(text("SELECT n FROM scratch_loop WHERE id = 1")).scalar_one())

    async def main() -> int:
        seen["loop_thread"] = threading.get_ident()
        try:
            return await db.on_loop(work)
        finally:
            await db.dispose_on_loop()

    assert asyncio.run(main()) == 1
    assert seen["thread"] == seen["loop_thread"]
    assert seen["driver"] == "AsyncConnection"
    # Outside on_loop the same code uses the blocking engine, from any thread.
    assert work() == 2
    assert seen["driver"] == "Connection"


def test_a_lock_wait_suspends_the_request_not_the_loop(db: Database) -> None:
    holder = psycopg.connect(_conninfo(db))
    holder.execute("UPDATE scratch_loop SET n = 100 WHERE id = 1")  # row locked until commit

    def update() -> None:
        with db.unit_of_work() as uow:
            uow.session.execute(text("UPDATE scratch_loop SET n = n + 1 WHERE id = 1"))

    async def main() -> int:
        ticks = 0
        waiting = asyncio.ensure_future(db.on_loop(update))
        for _ in range(20):  # the loop keeps running while the update waits on the lock
            await asyncio.sleep(0.01)
            ticks += 1
            assert not waiting.done()
        holder.commit()
        await waiting
        await db.dispose_on_loop()
        return ticks

    try:
        assert asyncio.run(main()) == 20
    finally:
        holder.close()
    assert _value(db) == 101


def test_each_event_loop_gets_its_own_engine(db: Database) -> None:
    def bump() -> None:
        with db.unit_of_work() as uow:
            uow.session.execute(text("UPDATE scratch_loop SET n = n + 1 WHERE id = 1"))

    engines = []

    async def main() -> None:
        await db.on_loop(bump)
        engines.append(db._loop_engine().engine)
        await db.dispose_on_loop()  # as the app's lifespan does when it stops

    for _ in range(3):  # an asyncio connection belongs to its loop: never shared
        asyncio.run(main())
    assert len({id(engine) for engine in engines}) == 3
    assert _value(db) == 3


def test_at_most_db_loop_concurrency_units_run_at_once(db: Database) -> None:
    bounded = Database(db.settings.model_copy(update={"db_loop_concurrency": 2}))
    running, peak, done = 0, 0, []

    def unit(n: int) -> None:
        nonlocal running, peak
        running += 1  # greenlets of one thread: no lock needed
        peak = max(peak, running)
        with bounded.unit_of_work() as uow:
            uow.session.execute(text("SELECT pg_sleep(0.05)"))
        running -= 1
        done.append(n)

    async def main() -> None:
        try:
            await asyncio.gather(*(bounded.on_loop(unit, n) for n in range(6)))
        finally:
            await bounded.dispose_on_loop()

    try:
        asyncio.run(main())
    finally:
        bounded.dispose()
    assert peak == 2
    assert sorted(done) == list(range(6))


def test_on_loop_is_refused_on_sqlite(runtime: Runtime) -> None:
    if not runtime.db.is_sqlite:
        pytest.skip("SQLite")
    with pytest.raises(ValueError, match="PostgreSQL"):
        asyncio.run(runtime.db.on_loop(lambda: None))


def _terminate(db: Database, pid: int) -> None:
    with psycopg.connect(_conninfo(db), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def _conninfo(db: Database) -> str:
    return db.url.replace("postgresql+psycopg://", "postgresql://", 1)


def _backend_pid(db: Database) -> int:
    with db.read_connection() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _on_one_loop(db: Database, *steps: Any) -> list[Any]:
    """Run each step with ``on_loop`` in turn, all on one event loop."""

    async def main() -> list[Any]:
        try:
            return [await db.on_loop(step) for step in steps]
        finally:
            await db.dispose_on_loop()

    return asyncio.run(main())


def test_a_connection_that_died_while_idle_is_replaced_before_use(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    def kill_then_use() -> tuple[int, int]:
        dead = _backend_pid(db)
        _terminate(db, dead)
        monkeypatch.setattr(opsline._connections, "PING_AFTER_IDLE_SECONDS", 0.0)
        return dead, _backend_pid(db)

    [(dead, used)] = _on_one_loop(db, kill_then_use)
    assert used != dead  # pinged, found dead, replaced: no error


def test_a_connection_used_a_moment_ago_is_not_pinged(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings: list[object] = []

    def use_five_times() -> None:
        dialect = db._current().lookups.dialect
        ping = dialect.do_ping

        def counting_ping(dbapi_connection: Any) -> bool:
            pings.append(dbapi_connection)
            return ping(dbapi_connection)

        monkeypatch.setattr(dialect, "do_ping", counting_ping)
        for _ in range(5):
            _backend_pid(db)

    def use_after_idle() -> None:
        monkeypatch.setattr(opsline._connections, "PING_AFTER_IDLE_SECONDS", 0.0)
        _backend_pid(db)

    _on_one_loop(db, use_five_times)
    assert pings == []
    pings.clear()
    _on_one_loop(db, use_five_times, use_after_idle)
    assert len(pings) == 1


def test_a_connection_lost_under_a_direct_statement_is_not_pooled_again(db: Database) -> None:
    """The statement carrying held-back writes goes to the DB-API cursor; when
    its connection died, the unit's rollback invalidates it, and the next unit
    of work gets a live one."""
    notes = Table("scratch_lost", MetaData(), Column("id", Integer, primary_key=True))
    notes.metadata.create_all(db.engine)

    def lost_unit() -> None:
        with db.unit_of_work() as uow:
            pid = int(uow.connection.execute(text("SELECT pg_backend_pid()")).scalar_one())
            _terminate(db, pid)
            uow.execute_later(*values_insert(notes, [{"id": 1}]))

    with pytest.raises(DBAPIError) as raised:
        lost_unit()
    assert raised.value.connection_invalidated
    with db.unit_of_work() as uow:
        uow.execute_later(*values_insert(notes, [{"id": 2}]))
    with db.read_connection() as conn:
        assert conn.execute(select(notes.c.id)).scalars().all() == [2]


def test_lookups_on_the_loop_use_connections_that_stay_in_autocommit(db: Database) -> None:
    """Reads and transactionless units get a pool of their own, never switched:
    a unit's transaction runs elsewhere, and a failed lookup leaves nothing open."""

    def lookups_then_unit() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        with db.read_connection() as conn:
            seen["read"] = conn.connection.driver_connection
        with pytest.raises(DBAPIError):
            db.fetch(text("SELECT no_such_column FROM scratch_loop"), {})
        with db.unit_of_work() as uow:
            seen["lookup"] = uow.lookup(text("SELECT n FROM scratch_loop WHERE id = 1")).scalar()
            seen["outside"] = uow._outside_connection().connection.driver_connection
            uow.session.execute(text("UPDATE scratch_loop SET n = n + 1 WHERE id = 1"))
            seen["unit"] = uow.connection.connection.driver_connection
            seen["unit_autocommit"] = seen["unit"].autocommit
        seen["rows"] = db.fetch(text("SELECT n FROM scratch_loop WHERE id = 1"), {})
        return seen

    [seen] = _on_one_loop(db, lookups_then_unit)
    assert seen["read"] is seen["outside"]  # the one pooled lookup connection, reused
    assert seen["read"].autocommit  # still, after it went back to the pool and out again
    assert seen["unit"] is not seen["read"] and not seen["unit_autocommit"]
    assert seen["lookup"] == 0 and [tuple(row) for row in seen["rows"]] == [(1,)]
