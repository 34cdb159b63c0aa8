"""Input types that every backend stores and compares alike.

A request that one database accepts and another refuses is a bug: PostgreSQL
refuses NUL in text and datetimes it cannot convert, SQLite takes them. These
types refuse such input at the edge, as a 422 that says what to fix.

- :data:`OneLine`: a name, a code or a filter value; no control character (C0,
  DEL, C1), no line or paragraph separator, no bidirectional embedding, override
  or isolate.
- :data:`FreeText`: a reason or a note; tab, line feed and carriage return
  allowed, the rest refused as in :data:`OneLine`.
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

# Unicode category Cc: C0 (NUL included), DEL and C1 (U+009B is a terminal's CSI);
# free text keeps tab, line feed and carriage return.
_CONTROLS = r"\x00-\x1f\x7f-\x9f"
_CONTROLS_IN_TEXT = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
# Line and paragraph separators break a line where no reader expects one; the
# embeddings, overrides and isolates reorder what is shown ("Trojan Source").
# The marks (U+200E, U+200F, U+061C) stay: right-to-left text needs them.
_SEPARATORS = r"\u2028\u2029"
_BIDI = r"\u202a-\u202e\u2066-\u2069"
_REFUSED = re.compile(f"[{_CONTROLS}{_SEPARATORS}{_BIDI}]")
_REFUSED_IN_TEXT = re.compile(f"[{_CONTROLS_IN_TEXT}{_SEPARATORS}{_BIDI}]")


def _refusal(found: re.Match[str], controls: str) -> ValueError:
    char = found.group()
    if char in "\u2028\u2029":
        what = "line or paragraph separators"
    elif char > "\x9f":
        what = "bidirectional formatting characters"
    else:
        what = controls
    return ValueError(
        f"must not contain {what} (found U+{ord(char):04X} at position {found.start()})"
    )


def check_one_line(value: str) -> str:
    """``value`` unchanged, or ValueError naming its first refused character."""
    found = _REFUSED.search(value)
    if found:
        raise _refusal(found, "control characters")
    return value


def check_free_text(value: str) -> str:
    """``value`` unchanged, or ValueError naming its first refused character; tab,
    line feed and carriage return are kept."""
    found = _REFUSED_IN_TEXT.search(value)
    if found:
        raise _refusal(found, "control characters other than tab and line breaks")
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
