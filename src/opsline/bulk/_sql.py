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
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, Table, Uuid, bindparam, func, select, text
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
    pairs: list[Any] = []
    for name in columns:
        pairs += [literal_column(f"'{name}'"), table.c[name]]
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
    import orjson

    return orjson.dumps(value)


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


def rowcount(result: object) -> int:
    return cast(CursorResult[Any], result).rowcount
