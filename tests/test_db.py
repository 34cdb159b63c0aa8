"""The unit of work: steps put last, after-commit callbacks, rollback; row ids."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import text

from opsline.db import Database, UnitOfWork, new_id
from opsline.platform.engine._engines import hot_engine
from opsline.platform.runtime import Runtime


@pytest.fixture
def db(runtime: Runtime) -> Database:
    with runtime.db.unit_of_work() as uow:
        uow.session.execute(text("CREATE TABLE scratch_steps (n INTEGER NOT NULL)"))
    return runtime.db


def _rows(db: Database) -> list[int]:
    with db.read() as session:
        return [n for (n,) in session.execute(text("SELECT n FROM scratch_steps ORDER BY n"))]


def _insert(uow: UnitOfWork, n: int) -> None:
    uow.connection.execute(text("INSERT INTO scratch_steps (n) VALUES (:n)"), {"n": n})


def _short() -> None:
    raise RuntimeError("short")


def _work_with_failing_last_step(db: Database, called: list[str]) -> None:
    with db.unit_of_work() as uow:
        _insert(uow, 1)
        uow.after_commit(lambda: called.append("after commit"))
        uow.last(_short)


def test_last_steps_run_after_the_work_and_before_commit(db: Database) -> None:
    order: list[str] = []
    with db.unit_of_work() as uow:
        uow.last(lambda: (order.append("last"), _insert(uow, 2)))
        uow.after_commit(lambda: order.append("after commit"))
        _insert(uow, 1)
        order.append("work")
    assert order == ["work", "last", "after commit"]
    assert _rows(db) == [1, 2]


def test_a_failing_last_step_rolls_everything_back(db: Database) -> None:
    called: list[str] = []
    with pytest.raises(RuntimeError, match="short"):
        _work_with_failing_last_step(db, called)
    assert _rows(db) == []
    assert called == []


def test_run_last_runs_each_step_once_and_rollback_drops_pending_steps(db: Database) -> None:
    runs: list[int] = []
    with db.unit_of_work() as uow:
        uow.last(lambda: runs.append(1))
        uow.run_last()
        uow.last(lambda: runs.append(2))
        uow.rollback()  # the pending step goes with the rolled-back work
        _insert(uow, 3)
    assert runs == [1]
    assert _rows(db) == [3]


def test_new_ids_are_uuid7_in_time_order_and_unique() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_id() for _ in range(20_000)]
    after = time.time_ns() // 1_000_000
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert len(set(ids)) == len(ids)
    # The first 48 bits are the Unix time in ms, so ids sort by when they were made.
    stamps = [i.int >> 80 for i in ids]
    assert before <= stamps[0] <= stamps[-1] <= after
    assert stamps == sorted(stamps)
    time.sleep(0.002)
    assert new_id() > max(ids)
    # The 74 bits after the version and variant are random (not all zero or all equal).
    assert len({i.int & ((1 << 62) - 1) for i in ids}) == len(ids)
    assert len({(i.int >> 64) & 0xFFF for i in ids}) > 1000


@pytest.mark.parametrize("pool", ["database", "engine's hot path"])
def test_a_failed_statements_error_does_not_carry_its_values(db: Database, pool: str) -> None:
    """Errors are logged; the values bound to a statement can be secrets."""
    from sqlalchemy.exc import StatementError

    engine = db.engine if pool == "database" else hot_engine(db)
    with pytest.raises(StatementError) as failed:
        with engine.begin() as conn:
            conn.execute(
                text("SELECT n FROM no_such_table WHERE n = :n"), {"n": "hash-of-a-secret"}
            )
    assert "no_such_table" in str(failed.value)
    assert "hash-of-a-secret" not in str(failed.value)


def test_a_held_back_statements_error_does_not_carry_its_values(db: Database) -> None:
    """Statements held back (``execute_later``) run on the DB-API cursor directly."""
    from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, insert
    from sqlalchemy.exc import IntegrityError

    table = Table(
        "scratch_secrets",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("token", String(40), unique=True),
    )
    table.create(db.engine)
    stmt = insert(table).values(id=bindparam("id"), token=bindparam("token"))
    with db.unit_of_work() as uow:
        uow.execute_later(stmt, {"id": 1, "token": "tok-first-secret"})
    with pytest.raises(IntegrityError) as failed:
        with db.unit_of_work() as uow:
            uow.execute_later(stmt, {"id": 2, "token": "tok-first-secret"})
    message = str(failed.value)
    assert "scratch_secrets" in message
    assert "[parameters:" not in message and "SQL parameters hidden" in message
    # PostgreSQL's own DETAIL names the key's value: masked when logged (test_logging).
    assert "tok-first-secret" not in message.split("DETAIL")[0]


def test_every_sqlite_connection_is_set_up_alike(db: Database) -> None:
    """The engine's hot-path pool (claims, acks, enqueues) checkpoints and checks
    foreign keys as the database's own does; only its busy wait differs."""
    if not db.is_sqlite:
        pytest.skip("SQLite's connection settings")
    settings = db.settings
    expected = {
        "journal_mode": "wal",
        "foreign_keys": 1,
        "wal_autocheckpoint": settings.sqlite_wal_autocheckpoint,
        "synchronous": {"OFF": 0, "NORMAL": 1, "FULL": 2, "EXTRA": 3}[settings.sqlite_synchronous],
    }
    for engine, busy_ms in ((db.engine, 30_000), (hot_engine(db), 0)):
        with engine.connect() as conn:
            seen = {name: conn.exec_driver_sql(f"PRAGMA {name}").scalar() for name in expected}
            assert seen == expected
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == busy_ms
