"""Input types that every backend stores and compares alike.

A request that one database accepts and another refuses is a bug: PostgreSQL
refuses datetimes it cannot convert, SQLite takes them. These
types refuse such input at the edge, as a 422 that says what to fix.

- :data:`UtcDatetime`: a datetime with an offset, converted to UTC.

Use them in request models and query parameters with their usual
``Field``/``Query`` constraints.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime

from opsline.platform.http.problems import Unprocessable


def to_utc(value: datetime) -> datetime:
    """An aware ``value`` in UTC; ValueError when UTC cannot hold it (year 1 or 9999
    with an offset that crosses the calendar's edge)."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range once converted to UTC") from None


UtcDatetime = Annotated[AwareDatetime, AfterValidator(to_utc)]


def check_window(
    start: datetime | None,
    end: datetime | None,
    *,
    names: tuple[str, str],
    where: str = "query",
) -> None:
    """Refuse a half-open window ``[start, end)`` that holds no instant (422 naming both).

    ``names`` are the two parameters as the client sent them.
    """
    if start is None or end is None or start < end:
        return
    first, second = names
    message = f"must be earlier than {second}"
    raise Unprocessable(
        f"{first} ({start.isoformat()}) must be earlier than {second} ({end.isoformat()})",
        errors=[
            {"loc": [where, first], "msg": message, "type": "value_error"},
            {"loc": [where, second], "msg": f"must be later than {first}", "type": "value_error"},
        ],
    )
