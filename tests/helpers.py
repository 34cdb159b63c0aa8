"""Small helpers for tests: accounts, headers, stopping the processes a test started."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi.testclient import TestClient

PASSWORD = "correct horse battery"
_counter = itertools.count()


@dataclass
class Account:
    email: str
    user_id: uuid.UUID
    tenant_id: uuid.UUID
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}{next(_counter)}-{uuid.uuid4().hex[:6]}@example.com"


def signup(client: TestClient, *, email: str | None = None, tenant: str = "Acme") -> Account:
    email = email or unique_email()
    response = client.post(
        "/api/v1/auth/signup", json={"email": email, "password": PASSWORD, "tenant_name": tenant}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return Account(
        email=email,
        user_id=uuid.UUID(body["user"]["id"]),
        tenant_id=uuid.UUID(body["tenant"]["id"]),
        access_token=body["tokens"]["access_token"],
        refresh_token=body["tokens"]["refresh_token"],
    )


def login(
    client: TestClient, email: str, password: str = PASSWORD, tenant_id: uuid.UUID | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"email": email, "password": password}
    if tenant_id:
        body["tenant_id"] = str(tenant_id)
    response = client.post("/api/v1/auth/login", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def add_member(client: TestClient, owner: Account, role: str, email: str | None = None) -> Account:
    """Invite someone with ``role`` into the owner's tenant and accept it."""
    email = email or unique_email(role)
    invited = client.post(
        "/api/v1/invitations", json={"email": email, "role": role}, headers=owner.headers
    )
    assert invited.status_code == 201, invited.text
    accepted = client.post(
        "/api/v1/auth/accept-invite",
        json={"token": invited.json()["token"], "password": PASSWORD},
    )
    assert accepted.status_code == 200, accepted.text
    tokens = accepted.json()
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    return Account(
        email=email,
        user_id=uuid.UUID(me.json()["user"]["id"]),
        tenant_id=owner.tenant_id,
        access_token=tokens["access_token"],
        refresh_token=tokens["refresh_token"],
    )


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["detail"]
    return body


def stop_group(process: subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
    """Stop a process started with ``start_new_session=True`` and everything it
    started: SIGTERM to its group, SIGKILL if it has not exited in ``timeout`` s."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
