"""Operations endpoints: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

import redis
from fastapi import APIRouter, Response
from fastapi.responses import ORJSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from opsline.platform.engine import metrics as engine_metrics
from opsline.platform.http.deps import RuntimeDep
from opsline.platform.http.routing import Route
from opsline.platform.observability.metrics import scrape_registry
from opsline.platform.runtime import Runtime

router = APIRouter(tags=["operations"], route_class=Route)

AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


@router.get("/health/live", summary="The process is up")
def live() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/health/ready",
    summary="The process can serve: database, and Redis and broker when configured",
    responses={
        503: {
            "description": "A dependency is down; the body names it",
            "content": {"application/json": {}},
        }
    },
)
def ready(runtime: RuntimeDep) -> Response:
    checks = check_dependencies(runtime)
    failing = [name for name, result in checks.items() if result != "ok"]
    body: dict[str, Any] = {"status": "ok" if not failing else "unavailable", "checks": checks}
    if failing:
        body["detail"] = "not ready: " + ", ".join(f"{n} ({checks[n]})" for n in failing)
        return ORJSONResponse(body, status_code=503)
    return ORJSONResponse(body)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics() -> Response:
    registry = scrape_registry(engine_metrics.read_at_scrape())
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def check_dependencies(runtime: Runtime) -> dict[str, str]:
    checks: dict[str, str] = {"database": _check(lambda: _database(runtime))}
    settings = runtime.settings
    if settings.redis_url:
        checks["redis"] = _check(lambda: _redis(settings.redis_url or ""))
    if settings.broker_url:
        checks["broker"] = _check(lambda: _broker(settings.broker_url or ""))
    return checks


def _check(probe: Any) -> str:
    try:
        probe()
    except Exception as exc:
        return type(exc).__name__
    return "ok"


def _database(runtime: Runtime) -> None:
    with runtime.db.read() as session:
        session.execute(text("SELECT 1"))


def _redis(url: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        client.ping()
    finally:
        client.close()


def _broker(url: str) -> None:
    """An AMQP server answers our protocol header with a Connection.Start frame."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 1) as sock:
        sock.settimeout(1)
        sock.sendall(AMQP_HEADER)
        frame = sock.recv(8)
    if not frame or frame[0] != 1:
        raise ConnectionError("not an AMQP 0-9-1 broker")
