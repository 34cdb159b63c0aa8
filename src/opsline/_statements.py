"""How the units of work of :mod:`opsline.db` build and run their statements.

Writes held back by :meth:`opsline.db.UnitOfWork.execute_later` ride in a later
statement as its data-modifying CTEs (:func:`_carrying`), or go together as one
closing SELECT that also checks their guards and returns their rows
(:func:`_closing`); :func:`values_insert` builds the INSERTs they carry. On the
hottest paths a statement runs straight on the DB-API cursor (:class:`_Direct`).

:mod:`opsline.db` imports this module and re-exports what other modules use;
this module imports nothing of it.
"""

from __future__ import annotations

import functools
import keyword
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Boolean, Insert, Integer, Table, bindparam, func, insert, select, union_all
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter, ClauseElement
from sqlalchemy.sql.selectable import HasCTE, Select
from sqlalchemy.sql.visitors import ExternallyTraversible, replacement_traverse
from sqlalchemy.types import TypeEngine

# Raised by opsline_expect (migration 0007) when a guard fails; its detail is the guard's number.
GUARD_FAILED = "OL001"


def _rows(conn: Connection, statement: Executable, params: Mapping[str, Any]) -> Sequence[Any]:
    """``statement``'s rows by column name: from the DB-API cursor where it can (SQLite)."""
    direct = _direct(statement, conn)
    if direct is not None and direct.covers(params):
        return direct.run(conn, params)
    return conn.execute(statement, params).all()


def _run_write(
    conn: Connection, statement: Executable, params: Mapping[str, Any], *, count_rows: bool
) -> int:
    """Run a write now; the number of rows it returned if ``count_rows``.

    Straight on the DB-API cursor where it can (see :class:`_Direct`): nothing
    SQLAlchemy's execution path does (result objects, typed rows) is wanted by
    a write whose outcome is at most a row count.
    """
    direct = _direct(statement, conn, typed_rows=False)
    if direct is None or not direct.covers(params):
        result = conn.execute(statement, params)
        return len(result.all()) if count_rows else 0
    rows = direct.run(conn, params, typed=False)
    return len(rows) if count_rows else 0


_REQUIRED: Any = object()


@dataclass(frozen=True, slots=True)
class _Direct:
    """A statement compiled once for the DB-API cursor.

    SQLAlchemy's execution path costs some 30 µs a statement on SQLite, about
    what SQLite takes to run a short insert or an indexed lookup itself, and on
    PostgreSQL a statement carrying a dozen writes spends longer building its
    parameters than psycopg takes to send it. For the hottest paths a statement
    is compiled once into its SQL, each parameter's name, value when not given
    (a value bound in the statement) and conversion, and each result column's
    name and conversion: SQLAlchemy's own bind and result processors, from the
    types (on PostgreSQL, whose result processors depend on the type the server
    reports, once per set of reported types). Rows come back as named tuples.
    While anything listens to the engine's statements (``before_cursor_execute``:
    tests, tracing) statements go through SQLAlchemy, so that they are seen.
    """

    sql: str
    names: tuple[str, ...]
    defaults: tuple[Any, ...]
    converters: tuple[Callable[[Any], Any] | None, ...]
    named: bool  # the DB-API takes a mapping (PostgreSQL), not a sequence (SQLite)
    # The result columns (SELECT, RETURNING): their types, and a named tuple of
    # their names (None when the names can't be a named tuple's: no typed rows).
    types: tuple[TypeEngine[Any], ...]
    row: type[tuple[Any, ...]] | None
    # The result processors by the type codes the cursor reported (SQLite: none).
    readers: dict[tuple[Any, ...], tuple[Callable[[Any], Any] | None, ...]]

    def covers(self, params: Mapping[str, Any]) -> bool:
        return all(
            name in params or default is not _REQUIRED
            for name, default in zip(self.names, self.defaults, strict=True)
        )

    def run(self, conn: Connection, params: Mapping[str, Any], *, typed: bool = True) -> list[Any]:
        """The statement's rows: typed as SQLAlchemy's if ``typed``, else as the DB-API's."""
        values = [
            value if convert is None else convert(value)
            for value, convert in zip(
                map(params.get, self.names, self.defaults), self.converters, strict=True
            )
        ]
        bound: Any = dict(zip(self.names, values, strict=True)) if self.named else values
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(self.sql, bound)
            description = cursor.description
            rows = cast(list[Any], cursor.fetchall()) if description is not None else []
        except conn.dialect.loaded_dbapi.Error as exc:
            # A lost connection is found and invalidated by the unit's rollback.
            # Its values hidden as the engine hides them: they can be customers' data.
            raise DBAPIError.instance(
                self.sql,
                bound,
                exc,
                conn.dialect.loaded_dbapi.Error,
                hide_parameters=conn.engine.hide_parameters,
                dialect=conn.dialect,
            ) from exc
        finally:
            cursor.close()
        if not typed or self.row is None or not rows:
            return rows
        codes = tuple(column[1] for column in description)
        readers = self.readers.get(codes)
        if readers is None:
            dialect = conn.dialect
            readers = tuple(
                t.dialect_impl(dialect).result_processor(dialect, code)
                for t, code in zip(self.types, codes, strict=True)
            )
            if len(self.readers) < 8:  # one set, bar a type made again (an enum's oid)
                self.readers[codes] = readers
        make = self.row._make  # type: ignore[attr-defined]
        if not any(readers):
            return [make(raw) for raw in rows]
        return [
            make([v if read is None else read(v) for v, read in zip(raw, readers, strict=True)])
            for raw in rows
        ]


# By the statement's id and dialect; the statement is kept, so that its id is not reused.
_DIRECT: dict[tuple[int, str], tuple[Executable, _Direct | None]] = {}
_DIRECT_MAX = 512


def _direct(statement: Executable, conn: Connection, *, typed_rows: bool = True) -> _Direct | None:
    """``statement`` compiled for ``conn``'s DB-API cursor, or None where only
    SQLAlchemy runs it: a statement listener; typed rows wanted of columns
    without plain names; expanding or callable parameters, escaped parameter
    names, values computed in Python."""
    dialect = conn.dialect
    if conn.dispatch.before_cursor_execute:
        return None
    key = (id(statement), dialect.name)
    found = _DIRECT.get(key)
    if found is not None and found[0] is statement:
        direct = found[1]
    else:
        direct = _compile_direct(statement, dialect)
        if len(_DIRECT) >= _DIRECT_MAX:
            _DIRECT.clear()  # statements are module constants or cached shapes: refilled at once
        _DIRECT[key] = (statement, direct)
    if direct is not None and typed_rows and direct.types and direct.row is None:
        return None
    return direct


def _compile_direct(statement: Executable, dialect: Dialect) -> _Direct | None:
    compiled = cast(ClauseElement, statement).compile(dialect=dialect)
    if (
        not isinstance(compiled, SQLCompiler)
        or compiled.literal_execute_params
        or compiled.post_compile_params
        or compiled.insert_prefetch
        or compiled.update_prefetch
        or compiled.escaped_bind_names
    ):
        return None
    if compiled.positional:
        if compiled.positiontup is None:
            return None
        names = tuple(compiled.positiontup)
    else:
        names = tuple(compiled.binds)
    binds = [compiled.binds[name] for name in names]
    if any(bind.callable is not None for bind in binds):
        return None
    columns: list[Any] = []
    if isinstance(statement, Select):
        columns = list(statement.selected_columns)
    elif compiled.isinsert or compiled.isupdate or compiled.isdelete:
        columns = list(getattr(statement, "_returning", ()))
    else:
        return None
    keys = [column.key for column in columns]
    plain = (
        bool(keys)
        and all(
            isinstance(k, str)
            and k.isidentifier()
            and not k.startswith("_")
            and not keyword.iskeyword(k)
            for k in keys
        )
        and len(set(keys)) == len(keys)
    )
    types = tuple(column.type for column in columns)
    return _Direct(
        compiled.string,
        names,
        tuple(_REQUIRED if bind.required else bind.value for bind in binds),
        tuple(bind.type.dialect_impl(dialect).bind_processor(dialect) for bind in binds),
        not compiled.positional,
        types,
        namedtuple("Row", keys) if plain else None,
        {}
        if dialect.name != "sqlite"
        else {
            (None,) * len(types): tuple(
                t.dialect_impl(dialect).result_processor(dialect, None) for t in types
            )
        },
    )


def values_insert(
    table: Table, rows: Sequence[Mapping[str, Any]], *, returning: tuple[str, ...] = ()
) -> tuple[Insert, dict[str, Any]]:
    """One INSERT of ``rows`` (same keys each), and its parameters.

    Every value is a named parameter, as :meth:`UnitOfWork.execute_later` and
    :meth:`UnitOfWork.execute` need; the statement is built once per table,
    columns, number of rows and ``returning`` columns.
    """
    columns = tuple(rows[0])
    params = {f"{column}_{i}": row[column] for i, row in enumerate(rows) for column in columns}
    return _values_insert(table, columns, len(rows), returning), params


@functools.lru_cache(maxsize=256)
def _values_insert(
    table: Table, columns: tuple[str, ...], count: int, returning: tuple[str, ...]
) -> Insert:
    def value(column: str, i: int) -> BindParameter[Any]:
        return bindparam(f"{column}_{i}", type_=table.c[column].type)

    # One row as VALUES, more as SELECTs joined by UNION ALL: a multi-row
    # VALUES list has no cache key in SQLAlchemy, so it would compile every time.
    if count == 1:
        stmt = insert(table).values({column: value(column, 0) for column in columns})
    else:
        rows = [select(*(value(column, i) for column in columns)) for i in range(count)]
        stmt = insert(table).from_select(columns, union_all(*rows))
    if returning:
        return stmt.returning(*(table.c[column] for column in returning))
    # inline: defaults the database computes are not fetched (fits in a CTE).
    return stmt.inline()


def _carrying(
    statement: Executable,
    params: Mapping[str, Any],
    later: list[tuple[Executable, Mapping[str, Any]]],
) -> tuple[Executable, dict[str, Any]]:
    """``statement`` with the ``later`` writes as data-modifying CTEs, and all parameters.

    Every statement's parameters get a prefix of its own (``c_`` for the carrier,
    ``w<n>_`` for the writes), so that equal names never meet: SQLAlchemy also
    reads an INSERT's columns from the names of the parameters it is given.
    """
    if not later:
        return statement, dict(params)
    merged = {f"c_{name}": value for name, value in params.items()}
    for slot, (_, values) in enumerate(later):
        merged.update({f"w{slot}_{name}": value for name, value in values.items()})
    return _with_ctes(statement, tuple(s for s, _ in later)), merged


@functools.lru_cache(maxsize=512)
def _with_ctes(statement: Executable, later: tuple[Executable, ...]) -> Executable:
    # Built once per combination (statements are module constants or cached
    # shapes): a reused statement object keeps its cache key and compiled form.
    ctes = [_prefixed(s, f"w{slot}_").cte(f"w{slot}") for slot, s in enumerate(later)]
    return cast(Executable, cast(HasCTE, _prefixed(statement, "c_")).add_cte(*ctes))


def _closing(
    later: list[tuple[Executable, Mapping[str, Any]]],
    guards: tuple[tuple[int, int], ...],
    returned: tuple[int, ...],
) -> tuple[Executable, dict[str, Any]]:
    """The ``later`` statements as one SELECT, and all their parameters.

    Writes become its data-modifying CTEs, held-back SELECTs (a ``pg_notify``)
    give it their columns, each guard's check is a column of it, and so is each
    column that the writes in ``returned`` (slots of ``later``) return
    (``r<slot>_<name>``).
    """
    merged: dict[str, Any] = {}
    for slot, (_, values) in enumerate(later):
        merged.update({f"w{slot}_{name}": value for name, value in values.items()})
    for number, (_, expect) in enumerate(guards):
        merged[f"g{number}"] = expect
    slots = tuple(slot for slot, _ in guards)
    return _closing_select(tuple(s for s, _ in later), slots, returned), merged


@functools.lru_cache(maxsize=256)
def _closing_select(
    later: tuple[Executable, ...], slots: tuple[int, ...], returned: tuple[int, ...]
) -> Executable:
    ctes: dict[int, Any] = {}
    columns: list[Any] = []
    for slot, statement in enumerate(later):
        prefixed = _prefixed(statement, f"w{slot}_")
        if isinstance(statement, Select) and slot not in slots:
            columns.extend(
                column.label(f"s{slot}_{i}") for i, column in enumerate(prefixed.selected_columns)
            )
        else:
            ctes[slot] = prefixed.cte(f"w{slot}")
    for slot in returned:
        columns.extend(
            select(column).scalar_subquery().label(f"r{slot}_{column.key}")
            for column in ctes[slot].c
        )
    checks = [
        func.opsline_expect(
            select(func.count()).select_from(ctes[slot]).scalar_subquery()
            == bindparam(f"g{number}", type_=Integer()),
            number,
            type_=Boolean(),
        ).label(f"g{number}")
        for number, slot in enumerate(slots)
    ]
    return select(*checks, *columns).add_cte(*ctes.values())


def _failed_guard(exc: DBAPIError) -> int | None:
    """The number of the guard whose check raised ``exc``, if that is what it is."""
    if getattr(exc.orig, "sqlstate", None) != GUARD_FAILED:
        return None
    diag = getattr(exc.orig, "diag", None)
    detail = getattr(diag, "message_detail", None)
    return int(detail) if detail is not None and detail.isdigit() else None


def _prefixed(statement: Executable, prefix: str) -> Any:
    """``statement`` with ``prefix`` before the name of each of its named parameters."""

    def rename(element: ExternallyTraversible, **_: Any) -> ExternallyTraversible | None:
        if isinstance(element, BindParameter) and not element.unique:
            return bindparam(prefix + element.key, type_=element.type)
        return None

    return replacement_traverse(cast(ExternallyTraversible, statement), {}, rename)
