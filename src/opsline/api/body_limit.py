"""A cap on the size of HTTP request bodies, enforced before routing.

FastAPI reads and parses a whole JSON body before an endpoint's dependencies
(authentication among them) run, so without a cap anyone could make the server
buffer and parse a gigabyte. A pure ASGI middleware: requests within the cap
that declare their length pass through untouched.

- A ``Content-Length`` above the cap: 413 at once, the body never read.
- No ``Content-Length`` (chunked): the bytes are counted as the app receives
  them; past the cap the app is told so (an exception out of ``receive``),
  whatever it sends is dropped, and the client gets 413. If the app had already
  started its response, delivery just stops.
- A malformed ``Content-Length``: 400.

Refusals close the connection (``Connection: close``): the rest of the body is
never read, so the connection cannot carry another request.
"""

from __future__ import annotations

import re

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opsline.api.errors import problem_response

_DIGITS = re.compile(rb"[0-9]+")
_MALFORMED = -1
# Beyond any cap; stands for lengths too long to parse cheaply.
_HUGE_DIGITS = 30


class BodyTooLarge(Exception):
    """Raised from ``receive`` when a body without Content-Length passes the cap."""


class BodyLimitMiddleware:
    """Refuse HTTP request bodies larger than ``max_bytes`` (WebSocket and lifespan pass)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared == _MALFORMED:
            detail = (
                "the Content-Length header must be one whole number of bytes; "
                "fix it or leave it out"
            )
            await _refuse(scope, receive, send, 400, detail)
        elif declared is not None and declared > self.max_bytes:
            await _refuse(scope, receive, send, 413, self._too_large())
        elif declared is not None:
            # The server delivers no more than the declared length.
            await self.app(scope, receive, send)
        else:
            await self._counted(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = 0
        refused = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            if not refused:
                message = await receive()
                if message["type"] != "http.request":
                    return message
                received += len(message.get("body", b""))
                refused = received > self.max_bytes
                if not refused:
                    return message
            raise BodyTooLarge(f"request body passed {self.max_bytes} bytes")

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the app's answer to a body it was refused
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            # FastAPI turns a failed body read into a 400 that ``guarded_send``
            # drops; anything else the refusal made the app raise ends here too.
            if not refused:
                raise
        if refused and not started:
            await _refuse(scope, receive, send, 413, self._too_large())

    def _too_large(self) -> str:
        return (
            f"the request body is larger than {self.max_bytes} bytes, the most this server "
            "accepts; send less, e.g. split the request into several smaller ones"
        )


def _content_length(scope: Scope) -> int | None:
    """The declared body length; None when absent, ``_MALFORMED`` when not one number.

    Repeated headers or a comma-separated list are accepted only when every value
    is the same (RFC 9110, 8.6). A Transfer-Encoding frames the body instead of the
    length (RFC 9112, 6.3): most servers refuse both at once; where one does not,
    the body is counted (None).
    """
    values: set[bytes] = set()
    for name, value in scope["headers"]:
        if name == b"content-length":
            values.update(part.strip() for part in value.split(b","))
        elif name == b"transfer-encoding":
            return None
    if not values:
        return None
    if len(values) != 1:
        return _MALFORMED
    (value,) = values
    if not _DIGITS.fullmatch(value):
        return _MALFORMED
    digits = value.lstrip(b"0")
    return int(digits or b"0") if len(digits) <= _HUGE_DIGITS else 10**_HUGE_DIGITS


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    request = Request(scope)
    response = problem_response(request, status, detail, headers={"Connection": "close"})
    await response(scope, receive, send)
