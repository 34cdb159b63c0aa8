"""The unit of work: steps put last, after-commit callbacks, rollback."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from opsline.db import Database, UnitOfWork
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
