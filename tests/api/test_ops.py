"""Health, readiness and metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from opsline.api import create_app
from opsline.bootstrap import bootstrap
from opsline.settings import Settings
from tests.helpers import signup


def test_live_is_200(app_client: TestClient) -> None:
    assert app_client.get("/health/live").json() == {"status": "ok"}


def test_ready_checks_the_database(app_client: TestClient) -> None:
    body = app_client.get("/health/ready").json()
    assert body["status"] == "ok"
    assert body["checks"] == {"database": "ok"}


def test_ready_is_503_naming_the_failing_part(settings: Settings, tmp_path: Path) -> None:
    broken = Settings(
        **{
            **settings.model_dump(),
            "redis_url": "redis://127.0.0.1:1/0",
            "broker_url": "amqp://guest:guest@127.0.0.1:1/",
        }
    )
    runtime = bootstrap(broken)
    try:
        with TestClient(create_app(runtime=runtime)) as client:
            response = client.get("/health/ready")
    finally:
        runtime.close()
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"] != "ok"
    assert body["checks"]["broker"] != "ok"
    assert "redis" in body["detail"] and "broker" in body["detail"]


def test_metrics_count_requests_by_route_template(app_client: TestClient) -> None:
    owner = signup(app_client)
    app_client.get("/api/v1/me", headers=owner.headers)
    text = app_client.get("/metrics").text
    assert 'opsline_http_requests_total{method="GET",route="/api/v1/me",status="200"}' in text
    assert "opsline_http_request_duration_seconds_bucket" in text


@pytest.mark.redis
def test_ready_with_redis_and_broker_up(
    settings: Settings, redis_url: str, broker_url: str
) -> None:
    runtime = bootstrap(
        Settings(**{**settings.model_dump(), "redis_url": redis_url, "broker_url": broker_url})
    )
    try:
        with TestClient(create_app(runtime=runtime)) as client:
            response = client.get("/health/ready")
    finally:
        runtime.close()
    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {"database": "ok", "redis": "ok", "broker": "ok"}
