"""Writes held back with ``execute_later``: sent with the next statement on PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Uuid,
    bindparam,
    cast,
    delete,
    event,
    func,
    select,
    type_coerce,
    update,
)
from sqlalchemy.exc import IntegrityError

from opsline.db import Database, UnitOfWork, _direct, values_insert
from opsline.orders.jobs import capture_payment
from opsline.platform.engine.models import jobs_table
from opsline.platform.runtime import Runtime

metadata = MetaData()
# Both tables have the columns ``id`` and ``name``: equal parameter names meet in one statement.
things = Table(
    "scratch_things",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("name", String(40), nullable=False),
)
notes = Table(
    "scratch_notes",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", Uuid, nullable=False),
    Column("name", String(40), nullable=False),
)


@pytest.fixture
def db(runtime: Runtime) -> Database:
    metadata.create_all(runtime.db.engine)
    return runtime.db


@pytest.fixture
def sent(db: Database) -> Iterator[list[str]]:
    """Every statement the database receives (one per round trip), on any engine."""
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    yield statements
    event.remove(db.engine, "before_cursor_execute", record)


def _thing(name: str) -> dict[str, Any]:
    return {"id": uuid.uuid4(), "name": name}


def _names(db: Database, table: Table) -> list[str]:
    with db.read() as session:
        return sorted(session.scalars(select(table.c.name)))


def test_held_back_writes_travel_with_the_next_statement(db: Database, sent: list[str]) -> None:
    with db.unit_of_work() as uow:
        uow.execute_later(*values_insert(things, [_thing("a")]))
        uow.execute_later(*values_insert(things, [_thing("b"), _thing("c"), _thing("d")]))
        sent.clear()
        seq = uow.execute(*values_insert(notes, [_thing("note")], returning=("seq",))).scalar_one()
        statements = list(sent)
    assert seq == 1
    assert _names(db, things) == ["a", "b", "c", "d"]
    assert _names(db, notes) == ["note"]
    # One round trip carrying both writes; SQLite ran each write when it was made.
    assert len(statements) == 1
    assert statements[0].count("INSERT INTO scratch_things") == (0 if db.is_sqlite else 2)


def test_a_carried_statement_is_compiled_once(db: Database) -> None:
    compiled = []
    for name in ("first", "second"):
        with db.unit_of_work() as uow:
            uow.execute_later(*values_insert(things, [_thing(name), _thing(name + "+")]))
            result = uow.execute(*values_insert(notes, [_thing(name)], returning=("seq",)))
            compiled.append(result.context.compiled)
            result.scalar_one()
    assert compiled[0] is compiled[1]  # taken from the cache, not compiled again


def test_reading_sends_the_held_back_writes_first(db: Database) -> None:
    with db.unit_of_work() as uow:
        uow.execute_later(*values_insert(things, [_thing("a")]))
        assert uow.session.scalar(select(func.count()).select_from(things)) == 1
        uow.execute_later(*values_insert(things, [_thing("b")]))
        assert uow.connection.scalar(select(func.count()).select_from(things)) == 2


def test_commit_sends_what_no_statement_carried(db: Database, sent: list[str]) -> None:
    with db.unit_of_work() as uow:
        uow.execute_later(*values_insert(things, [_thing("a")]))
        uow.execute_later(*values_insert(notes, [_thing("n")]))
        sent.clear()
    assert _names(db, things) == ["a"]
    assert _names(db, notes) == ["n"]
    inserts = [s for s in sent if s.lstrip().startswith(("INSERT", "WITH"))]
    assert len(inserts) == (0 if db.is_sqlite else 1)


def _note_with_held_back_thing(db: Database, thing: dict[str, Any]) -> None:
    with db.unit_of_work() as uow:
        uow.execute_later(*values_insert(things, [thing]))
        uow.execute(*values_insert(notes, [_thing("note")], returning=("seq",)))


def test_a_held_back_write_that_fails_rolls_the_unit_back(db: Database) -> None:
    taken = _thing("taken")
    with db.unit_of_work() as uow:
        uow.execute(*values_insert(things, [taken]))
    with pytest.raises(IntegrityError):
        _note_with_held_back_thing(db, {**taken, "name": "again"})
    assert _names(db, things) == ["taken"]
    assert _names(db, notes) == []


def test_rollback_drops_the_held_back_writes(db: Database) -> None:
    with db.unit_of_work() as uow:
        uow.execute_later(*values_insert(things, [_thing("dropped")]))
        uow.rollback()
        uow.execute_later(*values_insert(things, [_thing("kept")]))
    assert _names(db, things) == ["kept"]


def _payment_jobs(db: Database, order_id: uuid.UUID) -> int:
    with db.read() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(jobs_table)
                .where(jobs_table.c.name == capture_payment.name)
                .where(jobs_table.c.args["order_id"].as_string() == str(order_id))
            )
            or 0
        )


def test_enqueue_later_writes_the_job_and_skips_a_pending_unique_key(db: Database) -> None:
    tenant_id, order_id = uuid.uuid4(), uuid.uuid4()
    with db.unit_of_work() as uow:
        capture_payment.enqueue_later(uow, tenant_id=tenant_id, order_id=order_id)
        uow.execute(*values_insert(notes, [_thing("carrier")], returning=("seq",)))
    assert _payment_jobs(db, order_id) == 1
    with db.unit_of_work() as uow:  # same unique key while the first is pending
        capture_payment.enqueue_later(uow, tenant_id=tenant_id, order_id=order_id)
    assert _payment_jobs(db, order_id) == 1


class Refused(Exception):
    """The error a failed guard raises in these tests."""


def _rename(name: str, new: str) -> tuple[Any, dict[str, Any]]:
    stmt = (
        update(things)
        .where(things.c.name == bindparam("b_name"))
        .values(name=bindparam("new"))
        .returning(things.c.id)
    )
    return stmt, {"b_name": name, "new": new}


def test_a_guard_that_holds_lets_the_unit_commit(db: Database) -> None:
    with db.unit_of_work() as uow:
        uow.execute(*values_insert(things, [_thing("a")]))
    with db.unit_of_work() as uow:
        uow.execute_later(*values_insert(notes, [_thing("n")]))
        uow.execute_later(*_rename("a", "b"), expect=1, otherwise=Refused)
    assert _names(db, things) == ["b"]
    assert _names(db, notes) == ["n"]


def _refused_unit(db: Database) -> None:
    with db.unit_of_work() as uow:
        uow.execute_later(*values_insert(notes, [_thing("dropped")]))
        uow.execute_later(*_rename("absent", "x"), expect=1, otherwise=Refused)


def _guard_sent_now(uow: UnitOfWork) -> None:
    uow.execute_later(*_rename("absent", "x"), expect=1, otherwise=Refused)
    uow.send()


def test_a_failed_guard_raises_its_error_and_writes_nothing(db: Database) -> None:
    with pytest.raises(Refused):
        _refused_unit(db)
    assert _names(db, notes) == []
    # The unit is usable after a failed guard: what follows commits.
    with db.unit_of_work() as uow:
        uow.execute_later(*values_insert(notes, [_thing("dropped")]))
        with pytest.raises(Refused):
            _guard_sent_now(uow)
        uow.execute_later(*values_insert(notes, [_thing("after")]))
    assert _names(db, notes) == ["after"]


def test_a_guarded_select_checks_what_was_seen_in_the_same_statement(
    db: Database, sent: list[str]
) -> None:
    """A SELECT with expect= is a check (a row as the use case assumed it): on
    PostgreSQL it rides with the writes, and when it finds no row nothing is written."""
    with db.unit_of_work() as uow:
        uow.execute(*values_insert(things, [_thing("seen")]))
    seen = select(things.c.id).where(things.c.name == bindparam("name"))
    with db.unit_of_work() as uow:
        uow.execute_later(seen, {"name": "seen"}, expect=1, otherwise=Refused)
        uow.execute_later(*values_insert(notes, [_thing("kept")]))
        sent.clear()
    assert _names(db, notes) == ["kept"]
    if not db.is_sqlite:
        [statement] = [s for s in sent if s.lstrip().startswith("WITH")]
        assert "FROM scratch_things" in statement and "INSERT INTO scratch_notes" in statement

    def changed() -> None:
        with db.unit_of_work() as uow:
            uow.execute_later(seen, {"name": "changed"}, expect=1, otherwise=Refused)
            uow.execute_later(*values_insert(notes, [_thing("dropped")]))

    with pytest.raises(Refused):
        changed()
    assert _names(db, notes) == ["kept"]


def test_a_guard_needs_its_error() -> None:
    with pytest.raises(ValueError, match="otherwise"):
        UnitOfWork(None, postgres=True).execute_later(*_rename("a", "b"), expect=1)  # type: ignore[arg-type]


def test_lookups_and_held_back_writes_commit_as_one_statement(db: Database) -> None:
    """On PostgreSQL no transaction is opened: one statement in autocommit, no BEGIN."""
    sent: list[tuple[str, bool]] = []

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        autocommit = db.is_sqlite or bool(conn.connection.dbapi_connection.autocommit)
        sent.append((statement.split()[0], autocommit))

    with db.unit_of_work() as uow:
        event.listen(db.engine, "before_cursor_execute", record)
        try:
            assert uow.lookup(select(func.count()).select_from(notes)).scalar_one() == 0
            uow.execute_later(*values_insert(things, [_thing("a")]))
            uow.execute_later(*values_insert(notes, [_thing("n")]))
            uow.commit()
        finally:
            event.remove(db.engine, "before_cursor_execute", record)
    assert _names(db, things) == ["a"]
    assert _names(db, notes) == ["n"]
    if not db.is_sqlite:
        assert sent == [("SELECT", True), ("WITH", True)]


def test_a_returned_row_reaches_its_reader_with_the_carrying_statement(
    db: Database, sent: list[str]
) -> None:
    """A held-back insert whose RETURNING is wanted (a sequence number for a message
    after commit) still costs no round trip of its own: on PostgreSQL it comes back
    as columns of the one statement that commits the unit, in autocommit."""
    got: list[tuple[str, int]] = []
    with db.unit_of_work() as uow:
        uow.execute_later(*values_insert(things, [_thing("a")]))
        for name in ("first", "second"):
            uow.execute_later(
                *values_insert(notes, [_thing(name)], returning=("seq", "name")),
                returned=lambda row: got.append((row.name, row.seq)),
            )
        uow.execute_later(*values_insert(things, [_thing("b")]))
        if not db.is_sqlite:
            assert got == []  # held back until the unit sends them
        sent.clear()
    statements = [statement.split()[0] for statement in sent]
    assert got == [("first", 1), ("second", 2)]
    assert _names(db, things) == ["a", "b"]
    if not db.is_sqlite:
        assert statements == ["WITH"]


def test_a_returned_row_is_read_before_a_statement_runs_and_dropped_on_rollback(
    db: Database,
) -> None:
    got: list[int] = []
    with db.unit_of_work() as uow:
        uow.execute_later(
            *values_insert(notes, [_thing("sent")], returning=("seq",)),
            returned=lambda row: got.append(row.seq),
        )
        uow.execute(*values_insert(things, [_thing("a")]))
        assert got == [1]
        uow.execute_later(
            *values_insert(notes, [_thing("dropped")], returning=("seq",)),
            returned=lambda row: got.append(row.seq),
        )
        uow.rollback()
        uow.execute_later(*values_insert(things, [_thing("after")]))
    # SQLite runs a write, and gives its row, when it is made; PostgreSQL sent nothing.
    assert got == ([1, 2] if db.is_sqlite else [1])
    assert _names(db, things) == ["after"]
    assert _names(db, notes) == []


def test_a_failed_guard_drops_the_returned_rows_with_the_writes(db: Database) -> None:
    got: list[int] = []

    def refused() -> None:
        with db.unit_of_work() as uow:
            uow.execute_later(
                *values_insert(notes, [_thing("dropped")], returning=("seq",)),
                returned=lambda row: got.append(row.seq),
            )
            uow.execute_later(*_rename("absent", "x"), expect=1, otherwise=Refused)

    with pytest.raises(Refused):
        refused()
    if not db.is_sqlite:  # SQLite ran the insert, and its reader, when it was made
        assert got == []
    assert _names(db, notes) == []


def test_a_long_closing_statement_is_parsed_once(db: Database) -> None:
    """psycopg caches its placeholder conversion only for short queries by default;
    a closing statement of many held-back writes is longer, and repeats."""
    if db.is_sqlite:
        pytest.skip("psycopg's query conversion")
    from psycopg import _queries

    def unit() -> None:
        with db.unit_of_work() as uow:
            for i in range(30):  # 30 CTEs, 60 parameters, over 4 KiB
                uow.execute_later(*values_insert(notes, [_thing(f"n{i}")]))

    unit()
    parsed = _queries._query2pg.cache_info()
    unit()
    again = _queries._query2pg.cache_info()
    assert again.hits > parsed.hits and again.misses == parsed.misses
    assert len(_names(db, notes)) == 60


typed = Table(
    "scratch_typed",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("price", Numeric(12, 2), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("flag", Boolean, nullable=False),
    Column("note", String(40)),
)


def _typed_row(note: str) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "price": Decimal("12.30"),
        "at": datetime(2026, 12, 3, 9, 30, 15, 123456, tzinfo=UTC),
        "payload": {"lines": [1, 2], "name": "café"},
        "flag": True,
        "note": note,
    }


def test_sqlite_writes_go_to_the_cursor_as_sqlalchemy_would_write_them(db: Database) -> None:
    """On SQLite execute_later runs a plain write on the DB-API cursor (compiled
    once); the stored values are those SQLAlchemy's own execution stores."""
    if not db.is_sqlite:
        pytest.skip("SQLite's direct writes")
    statement, params = values_insert(typed, [_typed_row("direct")])
    with db.read_connection() as conn:
        assert _direct(statement, conn) is not None
    with db.unit_of_work() as uow:
        uow.execute_later(statement, params)
        uow.connection.execute(*values_insert(typed, [_typed_row("sqlalchemy")]))
    with db.read_connection() as conn:
        raw = conn.exec_driver_sql(
            "SELECT price, at, payload, flag, note FROM scratch_typed ORDER BY note"
        ).all()
        assert raw[0][:4] == raw[1][:4]  # the same stored text, whichever path wrote it
        [read] = conn.execute(select(typed).where(typed.c.note == "direct")).all()
    assert read.id == params["id_0"] and read.price == Decimal("12.30")
    assert read.payload == {"lines": [1, 2], "name": "café"} and read.flag is True


def test_sqlite_direct_writes_fail_like_sqlalchemys(db: Database) -> None:
    if not db.is_sqlite:
        pytest.skip("SQLite's direct writes")
    row = _typed_row("first")
    with db.unit_of_work() as uow:
        uow.execute_later(*values_insert(typed, [row]))

    def twice() -> None:
        with db.unit_of_work() as uow:
            uow.execute_later(*values_insert(typed, [_typed_row("rolled back")]))
            uow.execute_later(*values_insert(typed, [{**row, "note": "twice"}]))

    with pytest.raises(IntegrityError):
        twice()
    with db.read_connection() as conn:
        assert conn.execute(select(typed.c.note)).scalars().all() == ["first"]


def test_writes_only_sqlalchemy_can_run_still_run(db: Database) -> None:
    """Expanding parameters (IN of a list) and defaults computed in Python."""
    with db.unit_of_work() as uow:
        for name in ("a", "b", "c"):
            uow.execute_later(*values_insert(things, [_thing(name)]))
    gone = delete(things).where(things.c.name.in_(bindparam("names", expanding=True)))
    with db.read_connection() as conn:
        assert _direct(gone, conn) is None
    with db.unit_of_work() as uow:
        uow.execute_later(gone, {"names": ["a", "b"]})
    assert _names(db, things) == ["c"]


def test_fetch_reads_what_sqlalchemy_reads(db: Database) -> None:
    """Database.fetch (from the DB-API cursor) gives the values, types and
    column names of SQLAlchemy's own rows, converted as the server reports them
    (a float read as a Decimal)."""
    rows = [_typed_row("one"), {**_typed_row("two"), "note": None, "flag": False}]
    with db.unit_of_work() as uow:
        for row in rows:
            uow.execute_later(*values_insert(typed, [row]))
    query = select(
        typed,
        (typed.c.price * 2).label("double"),
        type_coerce(cast(typed.c.price, Float), Numeric(12, 2)).label("approx"),
    ).where(typed.c.price == bindparam("price"))
    with db.read_connection() as conn:
        assert _direct(query, conn) is not None
        expected = conn.execute(query, {"price": Decimal("12.30")}).all()
    fetched = db.fetch(query, {"price": Decimal("12.30")})
    assert len(fetched) == 2
    for got, want in zip(sorted(fetched, key=str), sorted(expected, key=str), strict=True):
        assert tuple(got) == tuple(want)
        assert [type(v) for v in got] == [type(v) for v in want]
        assert got.id == want.id and got.double == want.double  # type: ignore[attr-defined]
        assert got.approx == Decimal("12.30")  # type: ignore[attr-defined]
    assert db.fetch(query, {"price": Decimal("1.00")}) == []


def test_a_unit_fetches_what_its_insert_returns(db: Database) -> None:
    with db.unit_of_work() as uow:
        uow.execute_later(*values_insert(things, [_thing("carried")]))
        [first] = uow.fetch(*values_insert(notes, [_thing("a")], returning=("seq", "name")))
        [second] = uow.fetch(*values_insert(notes, [_thing("b")], returning=("seq", "name")))
    assert (first.name, second.name) == ("a", "b") and second.seq > first.seq
    assert _names(db, things) == ["carried"]


def test_which_statements_go_to_the_cursor(db: Database) -> None:
    """Writes and reads; not typed rows of columns a named tuple can't name;
    nothing while a statement listener is attached."""
    write, _ = values_insert(things, [_thing("x")])
    read = select(things.c.id).where(things.c.name == bindparam("name"))
    unnamed = select(things.c.id.label("_id"), things.c.id.label("class"))
    with db.read_connection() as conn:
        assert _direct(write, conn, typed_rows=False) is not None
        assert _direct(read, conn) is not None
        assert _direct(unnamed, conn) is None
        assert [tuple(row) for row in db.fetch(unnamed, {})] == [
            tuple(row) for row in conn.execute(unnamed).all()
        ]

        def record(*_: Any) -> None:
            pass

        event.listen(db.engine, "before_cursor_execute", record)
        try:
            assert _direct(write, conn, typed_rows=False) is None
        finally:
            event.remove(db.engine, "before_cursor_execute", record)
