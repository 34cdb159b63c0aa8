"""Input types that every backend stores and compares alike.

A request that one database accepts and another refuses is a bug: PostgreSQL
refuses NUL in text and datetimes it cannot convert, SQLite takes them. These
types refuse such input at the edge, as a 422 that says what to fix.

- :data:`OneLine`: a name, a code or a filter value; no control character.
- :data:`FreeText`: a reason or a note; tab and line breaks allowed, no other
  control character.
- :data:`UtcDatetime`: a datetime with an offset, converted to UTC.

Use them in request models and query parameters with their usual
``Field``/``Query`` constraints (``name: OneLine = Field(max_length=200)``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime

from opsline.platform.http.problems import Unprocessable

# C0 controls (NUL included) and DEL; free text keeps tab, line feed and carriage return.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _describe(match: re.Match[str]) -> str:
    return f"U+{ord(match.group()):04X} at position {match.start()}"


def check_one_line(value: str) -> str:
    """``value`` unchanged, or ValueError naming its first control character."""
    found = _CONTROL.search(value)
    if found:
        raise ValueError(f"must not contain control characters (found {_describe(found)})")
    return value


def check_free_text(value: str) -> str:
    """``value`` unchanged, or ValueError naming its first control character
    other than tab, line feed and carriage return."""
    found = _CONTROL_IN_TEXT.search(value)
    if found:
        raise ValueError(
            "must not contain control characters other than tab and line breaks "
            f"(found {_describe(found)})"
        )
    return value


def to_utc(value: datetime) -> datetime:
    """An aware ``value`` in UTC; ValueError when UTC cannot hold it (year 1 or 9999
    with an offset that crosses the calendar's edge)."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range once converted to UTC") from None


OneLine = Annotated[str, AfterValidator(check_one_line)]
FreeText = Annotated[str, AfterValidator(check_free_text)]
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
