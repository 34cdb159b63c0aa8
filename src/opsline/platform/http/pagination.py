"""Cursor pagination used by every list endpoint.

A cursor is an opaque, URL-safe token holding the sort key of the last item
returned (e.g. ``(created_at, id)``); the next page continues strictly after
it, so pages stay stable while rows are inserted.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar
from uuid import UUID

from fastapi import Depends, Query
from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, Select, and_, or_

from opsline.db import BIGINT_MAX
from opsline.platform.http.inputs import to_utc
from opsline.platform.http.problems import Unprocessable

T = TypeVar("T")
Row = TypeVar("Row")

MAX_LIMIT = 200
DEFAULT_LIMIT = 50


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


def encode_cursor(values: Sequence[Any]) -> str:
    raw = json.dumps([_plain(v) for v in values], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, kinds: Sequence[type]) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
        if not isinstance(values, list) or len(values) != len(kinds):
            raise ValueError("wrong shape")
        return [_typed(kind, value) for kind, value in zip(kinds, values, strict=True)]
    except (ValueError, TypeError):
        raise Unprocessable(
            "cursor is not valid; pass next_cursor from the previous page",
            errors=[{"loc": ["query", "cursor"], "msg": "invalid cursor"}],
        ) from None


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    return value


def _typed(kind: type, value: Any) -> Any:
    """``value`` as ``kind``, or ValueError: a cursor must bind on every backend.

    The cursors made here hold aware datetimes as ISO text, UUIDs as text and
    ints within a BIGINT; anything else (a naive or out-of-range time, a number
    where text belongs) was not made here.
    """
    if kind is datetime:
        if not isinstance(value, str):
            raise ValueError("not a time")
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            raise ValueError("naive time")
        return to_utc(moment)
    if kind is UUID:
        if not isinstance(value, str):
            raise ValueError("not a UUID")
        return UUID(value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int) or abs(value) > BIGINT_MAX:
            raise ValueError("not an integer within a BIGINT")
        return value
    return kind(value)


def keyset_page(
    stmt: Select[*tuple[Any, ...]],
    *,
    columns: Sequence[Any],
    cursor: str | None,
    limit: int,
    descending: bool = True,
    fetch: Callable[[Select[*tuple[Any, ...]]], Sequence[Row]],
    key: Callable[[Row], Sequence[Any]],
    kinds: Sequence[type],
) -> tuple[list[Row], str | None]:
    """Apply keyset pagination over ``columns`` (a unique sort key) to ``stmt``.

    ``fetch`` runs the statement; ``key`` extracts the sort key of a row.
    Returns the rows of this page and the cursor of the next one (or None).
    """
    limit = max(1, min(limit, MAX_LIMIT))
    if cursor:
        after = decode_cursor(cursor, kinds)
        stmt = stmt.where(_after(columns, after, descending))
    order = [c.desc() if descending else c.asc() for c in columns]
    rows = list(fetch(stmt.order_by(*order).limit(limit + 1)))
    next_cursor = encode_cursor(key(rows[limit - 1])) if len(rows) > limit else None
    return rows[:limit], next_cursor


def _after(columns: Sequence[Any], values: Sequence[Any], descending: bool) -> ColumnElement[bool]:
    # (a, b) < (x, y)  ==  a < x OR (a = x AND b < y), portable to SQLite.
    clauses = []
    for index, column in enumerate(columns):
        equal = [columns[i] == values[i] for i in range(index)]
        step = column < values[index] if descending else column > values[index]
        clauses.append(and_(*equal, step))
    return or_(*clauses)


class PageParams(BaseModel):
    """``?cursor=&limit=`` of a list endpoint (use as ``Annotated[PageParams, Query()]``)."""

    cursor: str | None = Field(
        default=None, max_length=512, description="next_cursor of the previous page"
    )
    limit: int = Field(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)


async def page_params(  # async: no thread-pool hop for two query parameters
    cursor: Annotated[
        str | None, Query(max_length=512, description="next_cursor of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="items per page")] = DEFAULT_LIMIT,
) -> PageParams:
    return PageParams(cursor=cursor, limit=limit)


PageDep = Annotated[PageParams, Depends(page_params)]
