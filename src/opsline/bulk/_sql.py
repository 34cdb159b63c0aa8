"""Set-based snapshot capture and restore, one statement per chunk.

Original values are captured *in SQL* as one JSON array per chunk
(``json_group_array(json_object(...))`` on SQLite, ``json_agg(json_build_object(...))``
on PostgreSQL), so Python never handles a value one by one; the text is then
compressed and encrypted as one blob. Restores feed the JSON back as one
parameter (``json_each`` / ``json_populate_recordset``) in one ``UPDATE ... FROM``
or ``INSERT ... SELECT``. Values round-trip in their stored representation, so a
restored row is byte-identical to the original.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, cast

import orjson
from sqlalchemy import (
    ColumnElement,
    CursorResult,
    String,
    Table,
    Text,
    Uuid,
    bindparam,
    func,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy import cast as sa_cast
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import literal_column


def _check(columns: Sequence[str]) -> None:
    for name in columns:
        if not name.isidentifier():
            raise ValueError(f"not a plain column name: {name!r}")


def capture(
    session: Session, table: Table, columns: Sequence[str], where: ColumnElement[bool]
) -> bytes:
    """A JSON array (text, as bytes) of ``{column: stored value}`` for the rows matching."""
    _check(columns)
    pairs = _pairs(table, columns)
    if session.get_bind().dialect.name == "sqlite":
        agg = func.json_group_array(func.json_object(*pairs))
    else:
        agg = func.coalesce(func.json_agg(func.json_build_object(*pairs)), text("'[]'::json"))
    stmt = select(cast(Any, agg)).select_from(table).where(where)
    value = session.execute(stmt).scalar_one()
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return orjson.dumps(value)


def _pairs(table: Table, columns: Sequence[str]) -> list[Any]:
    pairs: list[Any] = []
    for name in columns:
        pairs += [literal_column(f"'{name}'"), table.c[name]]
    return pairs


def update_capturing(
    session: Session,
    table: Table,
    columns: Sequence[str],
    where: ColumnElement[bool],
    changes: Mapping[str, ColumnElement[Any]],
) -> tuple[bytes, int]:
    """One ``UPDATE ... RETURNING``: the rows' new values as :func:`capture` gives them, and count.

    Each row comes back as the same JSON object text :func:`capture` builds
    (``json_object`` / ``json_build_object``), only joined into the array here,
    so the result compares equal to a later :func:`capture` of unchanged rows.
    """
    _check(columns)
    pairs = _pairs(table, columns)
    if session.get_bind().dialect.name == "sqlite":
        row = type_coerce(func.json_object(*pairs), String())
    else:
        row = type_coerce(sa_cast(func.json_build_object(*pairs), Text()), String())
    stmt = update(table).where(where).values(changes).returning(row)
    rows: list[str] = list(session.execute(stmt).scalars())
    return ("[" + ",".join(rows) + "]").encode(), len(rows)


def tenant_is(session: Session, table: Table, tenant_id: uuid.UUID) -> ColumnElement[bool]:
    """``table.tenant_id = :tenant`` that never drives the plan on SQLite.

    Chunk statements name their records by id (``id IN (chunk items)``); on
    SQLite a plain tenant test makes the planner walk the tenant index, i.e.
    every record of the tenant, for every chunk. Unary ``+`` keeps it as a
    filter so the planner seeks each record by primary key.
    """
    column = table.c.tenant_id
    if session.get_bind().dialect.name != "sqlite":
        return column == tenant_id
    plus = literal_column(f"+{_quote(session, table.name)}.tenant_id", type_=column.type)
    return plus == tenant_id


def storage_order(session: Session, table: Table) -> ColumnElement[Any]:
    """The rows' physical position (SQLite ``rowid``, PostgreSQL ``ctid``).

    Chunks numbered in this order hold neighbouring rows, so a chunk's
    ``UPDATE`` dirties a few contiguous pages instead of pages all over the
    table (ids are random UUIDs): every chunk would otherwise rewrite most of
    the table into the write-ahead log at commit.
    """
    position = "rowid" if session.get_bind().dialect.name == "sqlite" else "ctid"
    return literal_column(f"{_quote(session, table.name)}.{position}")


def _quote(session: Session, name: str) -> str:
    return session.get_bind().dialect.identifier_preparer.quote(name)


def restore_update(
    session: Session, table: Table, columns: Sequence[str], data: bytes, tenant_id: uuid.UUID
) -> int:
    """Set ``columns`` of each row in ``data`` (a JSON array with ``id``) back; returns rows."""
    _check(columns)
    name = _quote(session, table.name)
    cols = [c for c in columns if c != "id"]
    if session.get_bind().dialect.name == "sqlite":
        sets = ", ".join(f"{_quote(session, c)} = json_extract(j.value, '$.{c}')" for c in cols)
        sql = (
            f"UPDATE {name} SET {sets} FROM json_each(:data) AS j "
            # Unary + keeps the planner off the tenant index: walk the JSON, seek by id.
            f"WHERE {name}.id = json_extract(j.value, '$.id') AND +{name}.tenant_id = :tenant"
        )
    else:
        sets = ", ".join(f"{_quote(session, c)} = v.{_quote(session, c)}" for c in cols)
        sql = (
            f"UPDATE {name} AS t SET {sets} "
            f"FROM json_populate_recordset(NULL::{name}, CAST(:data AS json)) AS v "
            "WHERE t.id = v.id AND t.tenant_id = :tenant"
        )
    stmt = text(sql).bindparams(
        bindparam("data", data.decode()), bindparam("tenant", tenant_id, type_=Uuid())
    )
    return cast(CursorResult[Any], session.execute(stmt)).rowcount


def restore_insert(session: Session, table: Table, columns: Sequence[str], data: bytes) -> int:
    """Insert the whole rows in ``data`` (a JSON array) again; returns rows."""
    _check(columns)
    name = _quote(session, table.name)
    quoted = ", ".join(_quote(session, c) for c in columns)
    if session.get_bind().dialect.name == "sqlite":
        values = ", ".join(f"json_extract(j.value, '$.{c}')" for c in columns)
        sql = f"INSERT INTO {name} ({quoted}) SELECT {values} FROM json_each(:data) AS j"
    else:
        sql = (
            f"INSERT INTO {name} ({quoted}) SELECT {quoted} "
            f"FROM json_populate_recordset(NULL::{name}, CAST(:data AS json))"
        )
    stmt = text(sql).bindparams(bindparam("data", data.decode()))
    return cast(CursorResult[Any], session.execute(stmt)).rowcount


def held_by_another(session: Session, table: Table, columns: Sequence[str], record: bytes) -> bool:
    """Whether a row other than ``record``'s holds its restored values of ``columns``.

    ``record`` is one JSON object with ``id`` in stored form (as :func:`capture`
    gives it); a column it leaves out counts with the row's current value (an
    updated record keeps its other columns). Values compare as stored, so this
    names the unique constraint a restore of ``record`` would break.
    """
    _check([*columns, "id"])
    name = _quote(session, table.name)
    sqlite = session.get_bind().dialect.name == "sqlite"
    if sqlite:
        source, rid = "", "json_extract(:rec, '$.id')"
    else:
        source = f", json_populate_record(NULL::{name}, CAST(:rec AS json)) AS r"
        rid = "r.id"
    present = set(orjson.loads(record))
    tests = [f"o.id <> {rid}"]
    for column in columns:
        quoted = _quote(session, column)
        if column not in present:
            value = f"(SELECT m.{quoted} FROM {name} AS m WHERE m.id = {rid})"
        elif sqlite:
            value = f"json_extract(:rec, '$.{column}')"
        else:
            value = f"r.{quoted}"
        tests.append(f"o.{quoted} = {value}")
    sql = f"SELECT 1 FROM {name} AS o{source} WHERE {' AND '.join(tests)} LIMIT 1"
    stmt = text(sql).bindparams(bindparam("rec", record.decode()))
    return session.execute(stmt).first() is not None


def rowcount(result: object) -> int:
    return cast(CursorResult[Any], result).rowcount
