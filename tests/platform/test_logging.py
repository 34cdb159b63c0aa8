"""Passwords, tokens and keys never reach a log line."""

from __future__ import annotations

import logging

import pytest
import structlog
from fastapi.testclient import TestClient

from opsline.platform.observability.logging import configure_logging
from tests.helpers import PASSWORD, signup


def test_secrets_never_appear_in_logs(
    app_client: TestClient, capfd: pytest.CaptureFixture[str]
) -> None:
    configure_logging("json", "DEBUG")
    account = signup(app_client)
    login = app_client.post(
        "/api/v1/auth/login", json={"email": account.email, "password": PASSWORD}
    ).json()
    key = app_client.post("/api/v1/api-keys", json={"name": "ci"}, headers=account.headers).json()[
        "key"
    ]
    app_client.get("/api/v1/me", headers={"X-API-Key": key})
    app_client.post("/api/v1/auth/refresh", json={"refresh_token": login["refresh_token"]})
    app_client.post("/api/v1/auth/login", json={"email": account.email, "password": "wrong!" * 3})
    # Even a careless log call is masked.
    structlog.get_logger("careless").info(
        "debugging", password=PASSWORD, headers={"authorization": f"Bearer {login['access_token']}"}
    )
    logging.getLogger("careless.stdlib").warning("got key %s", key)
    # PostgreSQL's error text names a violated key's values.
    structlog.get_logger("careless").error(
        "integrity", error=f"DETAIL:  Key (lower((email)::text))=({account.email}) already exists."
    )

    out, err = capfd.readouterr()
    logs = out + err
    assert '"event": "request"' in logs  # logging really happened
    for secret in (
        PASSWORD,
        account.access_token,
        account.refresh_token,
        login["access_token"],
        login["refresh_token"],
        key,
        account.email,
    ):
        assert secret not in logs
    assert "[redacted]" in logs
    assert "Key (lower((email)::text))=([redacted]) already exists" in logs


def test_request_log_lines_carry_request_id_and_tenant(
    app_client: TestClient, capfd: pytest.CaptureFixture[str]
) -> None:
    import json

    configure_logging("json", "INFO")
    account = signup(app_client)
    response = app_client.get("/api/v1/me", headers=account.headers)
    out, err = capfd.readouterr()
    lines = [json.loads(x) for x in (out + err).splitlines() if x.startswith("{")]
    me_lines = [x for x in lines if x.get("event") == "request" and x.get("route") == "/api/v1/me"]
    assert me_lines
    line = me_lines[-1]
    assert line["request_id"] == response.headers["x-request-id"]
    assert line["tenant_id"] == str(account.tenant_id)
    assert line["principal"] == f"user:{account.user_id}"
