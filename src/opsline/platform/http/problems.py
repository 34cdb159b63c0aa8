"""Errors that carry their meaning, rendered as RFC 9457 problem documents.

Domain code raises a :class:`Problem` (or a subclass in a capability's
``errors.py``); one handler in the app renders it as
``application/problem+json`` with the request id (:func:`problem_document`,
also used where a WebSocket handshake is refused). Nothing internal leaks.
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson
from starlette.requests import HTTPConnection
from starlette.responses import Response

PROBLEM_BASE = "https://opsline.dev/problems/"
PROBLEM_JSON = "application/problem+json"

# How the OpenAPI document describes every error answer: any 4xx or 5xx is a
# problem document. Routes name these (``Route``); the app adds the schema.
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "request_id": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {"type": "object"},
            "description": "each invalid field: loc, msg, type",
        },
    },
    "additionalProperties": True,
    "description": "An RFC 9457 problem document; some problems add fields of their own.",
}
PROBLEM_CONTENT = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"description": "The request cannot be served as sent", "content": PROBLEM_CONTENT},
    "5XX": {"description": "The server failed or is unavailable", "content": PROBLEM_CONTENT},
}


def document_problems(schema: dict[str, Any]) -> None:
    """Add the problem document's schema to an OpenAPI ``schema``."""
    schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA


def problem_document(
    conn: HTTPConnection,
    body: dict[str, Any],
    *,
    headers: dict[str, str] | None = None,
) -> Response:
    """``body`` (a problem document with its ``status``) as the answer to ``conn``:
    the path as its ``instance`` unless it names one, and the request id."""
    body.setdefault("instance", conn.url.path)
    request_id = conn.scope.get("state", {}).get("request_id")
    if request_id:
        body["request_id"] = request_id
    return Response(orjson.dumps(body), body["status"], headers=headers, media_type=PROBLEM_JSON)


class Problem(Exception):
    """A client-visible error with an HTTP status and a stable problem type."""

    status: ClassVar[int] = 400
    type_slug: ClassVar[str] = "bad-request"
    title: ClassVar[str] = "Bad request"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.type_slug

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.type_uri,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body

    def response(self, conn: HTTPConnection) -> Response:
        """This problem as the answer to the request (or WebSocket handshake) ``conn``."""
        return problem_document(conn, self.body(), headers=self.headers)


class BadRequest(Problem):
    pass


class Unauthorized(Problem):
    status = 401
    type_slug = "unauthorized"
    title = "Authentication required"

    def __init__(self, detail: str = "missing or invalid credentials", **extra: Any):
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"}, **extra)


class Forbidden(Problem):
    status = 403
    type_slug = "forbidden"
    title = "Permission denied"


class NotFound(Problem):
    status = 404
    type_slug = "not-found"
    title = "Not found"


class Conflict(Problem):
    status = 409
    type_slug = "conflict"
    title = "Conflict"


class Unprocessable(Problem):
    status = 422
    type_slug = "validation-error"
    title = "Invalid request"


class TooManyRequests(Problem):
    status = 429
    type_slug = "rate-limited"
    title = "Too many requests"


class ServiceUnavailable(Problem):
    status = 503
    type_slug = "unavailable"
    title = "Service unavailable"
