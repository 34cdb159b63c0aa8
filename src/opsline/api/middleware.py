"""Request id, structured context, metrics and one log line per request.

A pure ASGI middleware (no per-request task like BaseHTTPMiddleware), so it
costs microseconds and keeps streaming responses streaming.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextvars import ContextVar
from typing import Any

import orjson
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opsline.platform.http.problems import PROBLEM_BASE
from opsline.platform.observability.metrics import HTTP_LATENCY, HTTP_REQUESTS

log = structlog.get_logger("opsline.http")
_VALID_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")

# Set in the server's task for this connection once a WebSocket was refused with
# an HTTP response (the denial response extension).
_DENIED: ContextVar[bool] = ContextVar("opsline_websocket_denied", default=False)
_INCOMPLETE_HANDSHAKE = "ASGI callable returned without completing handshake."


class DeniedHandshakeIsNoError(logging.Filter):
    """uvicorn's default WebSocket protocol (websockets-sansio, 0.54) logs
    "ASGI callable returned without completing handshake." at ERROR after every
    denial response, although the client got it (uvicorn pull request 3138).
    Dropped here for the refusals this app sent, which it logs itself with their
    status; a handler that returned without accepting or refusing is still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_DENIED.get() and record.getMessage() == _INCOMPLETE_HANDSHAKE)


def install_log_filters() -> None:
    """Add :class:`DeniedHandshakeIsNoError` to uvicorn's error logger (once)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, DeniedHandshakeIsNoError) for f in logger.filters):
        logger.addFilter(DeniedHandshakeIsNoError())


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = _incoming_id(scope) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500
        started_response = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started_response
            kind = message["type"]
            # A WebSocket refused with an HTTP response (the denial response
            # extension) starts one like any request's.
            if kind in ("http.response.start", "websocket.http.response.start"):
                if kind == "websocket.http.response.start":
                    _DENIED.set(True)
                started_response = True
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            elif kind == "websocket.accept":
                started_response, status = True, 101
            elif kind == "websocket.close" and not started_response:
                started_response, status = True, 403  # closed before accepting: a 403
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled_error", path=scope.get("path"))
            if scope["type"] != "http" or started_response:
                raise
            await _send_internal_error(scope, request_id, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = _route_template(scope)
            method = scope.get("method", "WS")
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_LATENCY.labels(method, route).observe(elapsed)
            _bind_principal(scope)
            log.info(
                "request",
                method=method,
                path=scope.get("path"),
                route=route,
                status=status,
                duration_ms=round(elapsed * 1000, 2),
            )
            structlog.contextvars.clear_contextvars()


async def _send_internal_error(scope: Scope, request_id: str, send: Send) -> None:
    body = orjson.dumps(
        {
            "type": PROBLEM_BASE + "internal",
            "title": "Internal server error",
            "status": 500,
            "detail": "an internal error occurred; quote the request id when reporting it",
            "instance": scope.get("path"),
            "request_id": request_id,
        }
    )
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _VALID_ID.match(text) else None
    return None


def _route_template(scope: Scope) -> str:
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


def _bind_principal(scope: Scope) -> None:
    principal = scope.get("state", {}).get("principal")
    if principal is not None:
        structlog.contextvars.bind_contextvars(
            tenant_id=str(principal.tenant_id), principal=principal.subject
        )
