"""Every way a credential can be wrong gets a 401; limits and roles hold."""

from __future__ import annotations

import base64
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import jwt
import pytest
from fastapi.testclient import TestClient

from opsline.api import create_app
from opsline.bootstrap import bootstrap
from opsline.platform.auth.tokens import TokenSigner
from opsline.platform.runtime import Runtime
from opsline.settings import Settings
from tests._server import serve
from tests.helpers import PASSWORD, add_member, assert_problem, signup


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _me(client: TestClient, token: str) -> object:
    return client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})


def test_tampered_signature_is_401(app_client: TestClient) -> None:
    token = signup(app_client).access_token
    head, payload, signature = token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    assert_problem(_me(app_client, f"{head}.{payload}.{flipped}"), 401)


def test_tampered_payload_is_401(app_client: TestClient) -> None:
    victim = signup(app_client)
    attacker = signup(app_client)
    head, _, signature = attacker.access_token.split(".")
    claims = jwt.decode(attacker.access_token, options={"verify_signature": False})
    claims["tid"] = str(victim.tenant_id)
    assert_problem(_me(app_client, f"{head}.{_b64(claims)}.{signature}"), 401)


def test_alg_none_is_401(app_client: TestClient) -> None:
    account = signup(app_client)
    claims = jwt.decode(account.access_token, options={"verify_signature": False})
    header = jwt.get_unverified_header(account.access_token)
    forged = f"{_b64({**header, 'alg': 'none'})}.{_b64(claims)}."
    assert_problem(_me(app_client, forged), 401)


def test_expired_token_is_401(app_client: TestClient, runtime: Runtime) -> None:
    account = signup(app_client)
    claims = jwt.decode(account.access_token, options={"verify_signature": False})
    header = jwt.get_unverified_header(account.access_token)
    claims["iat"] = int(time.time()) - 3600
    claims["exp"] = int(time.time()) - 60
    key = runtime.tokens._keys[header["kid"]]
    expired = jwt.encode(claims, key, algorithm="HS256", headers={"kid": header["kid"]})
    body = assert_problem(_me(app_client, expired), 401)
    assert "expired" in body["detail"]


def test_unknown_kid_is_401(app_client: TestClient, runtime: Runtime) -> None:
    account = signup(app_client)
    claims = jwt.decode(account.access_token, options={"verify_signature": False})
    header = jwt.get_unverified_header(account.access_token)
    key = runtime.tokens._keys[header["kid"]]
    forged = jwt.encode(claims, key, algorithm="HS256", headers={"kid": "not-a-known-key"})
    assert_problem(_me(app_client, forged), 401)


def test_token_signed_with_another_secret_is_401(
    app_client: TestClient, settings: Settings
) -> None:
    account = signup(app_client)
    foreign = TokenSigner(
        Settings(**{**settings.model_dump(), "secret_key": "another-" + "z" * 40})
    )
    token = foreign.issue(
        user_id=account.user_id, tenant_id=account.tenant_id, session_id=uuid.uuid4()
    )
    assert_problem(_me(app_client, token), 401)


def test_rotated_secret_still_verifies_old_tokens(
    app_client: TestClient, settings: Settings
) -> None:
    account = signup(app_client)
    assert settings.secret_key is not None
    rotated = Settings(
        **{
            **settings.model_dump(),
            "secret_key": "a-brand-new-secret-" + "y" * 30,
            "previous_secret_keys": [settings.secret_key.get_secret_value()],
        }
    )
    runtime = bootstrap(rotated)
    try:
        with TestClient(create_app(runtime=runtime)) as client:
            assert _me(client, account.access_token).status_code == 200
            fresh = client.post(
                "/api/v1/auth/login", json={"email": account.email, "password": PASSWORD}
            )
            new_kid = jwt.get_unverified_header(fresh.json()["access_token"])["kid"]
            assert new_kid != jwt.get_unverified_header(account.access_token)["kid"]
    finally:
        runtime.close()


def test_refresh_token_reuse_revokes_the_whole_family(app_client: TestClient) -> None:
    account = signup(app_client)
    first = app_client.post("/api/v1/auth/refresh", json={"refresh_token": account.refresh_token})
    successor = first.json()
    replay = app_client.post("/api/v1/auth/refresh", json={"refresh_token": account.refresh_token})
    assert_problem(replay, 401)
    # The thief's replay took the legitimate successor down with it.
    later = app_client.post(
        "/api/v1/auth/refresh", json={"refresh_token": successor["refresh_token"]}
    )
    assert_problem(later, 401)
    assert_problem(_me(app_client, successor["access_token"]), 401)


def test_revoked_api_key_is_401(app_client: TestClient) -> None:
    owner = signup(app_client)
    created = app_client.post(
        "/api/v1/api-keys", json={"name": "ci", "role": "viewer"}, headers=owner.headers
    )
    assert created.status_code == 201
    key = created.json()["key"]
    me = app_client.get("/api/v1/me", headers={"X-API-Key": key})
    assert me.status_code == 200
    assert me.json()["role"] == "viewer"
    revoked = app_client.delete(f"/api/v1/api-keys/{created.json()['id']}", headers=owner.headers)
    assert revoked.status_code == 200
    assert_problem(app_client.get("/api/v1/me", headers={"X-API-Key": key}), 401)


def test_api_key_with_wrong_secret_is_401(app_client: TestClient) -> None:
    owner = signup(app_client)
    key = app_client.post("/api/v1/api-keys", json={"name": "ci"}, headers=owner.headers).json()
    forged = key["key"][:-4] + "AAAA"
    assert_problem(app_client.get("/api/v1/me", headers={"X-API-Key": forged}), 401)
    assert_problem(app_client.get("/api/v1/me", headers={"X-API-Key": "garbage"}), 401)


def test_api_key_records_last_use(app_client: TestClient) -> None:
    owner = signup(app_client)
    key = app_client.post("/api/v1/api-keys", json={"name": "ci"}, headers=owner.headers).json()
    assert key["last_used_at"] is None
    app_client.get("/api/v1/me", headers={"X-API-Key": key["key"]})
    listed = app_client.get("/api/v1/api-keys", headers=owner.headers).json()["items"]
    assert listed[0]["last_used_at"] is not None
    assert "key" not in listed[0]


def test_admin_cannot_mint_a_key_above_their_role(app_client: TestClient) -> None:
    owner = signup(app_client)
    admin = add_member(app_client, owner, "admin")
    response = app_client.post(
        "/api/v1/api-keys", json={"name": "x", "role": "owner"}, headers=admin.headers
    )
    assert_problem(response, 403)


def test_viewer_calling_a_write_endpoint_is_403(app_client: TestClient) -> None:
    owner = signup(app_client)
    viewer = add_member(app_client, owner, "viewer")
    response = app_client.post(
        "/api/v1/invitations", json={"email": "x@example.com"}, headers=viewer.headers
    )
    body = assert_problem(response, 403)
    assert body["permission"] == "members.manage"
    assert app_client.get("/api/v1/members", headers=viewer.headers).status_code == 200


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"rate_limit_failed_login": "3/hour", "rate_limit_api": "100000/minute"}


def test_repeated_failed_logins_are_429(app_client: TestClient) -> None:
    account = signup(app_client)
    bad = {"email": account.email, "password": "not the password"}
    statuses = [app_client.post("/api/v1/auth/login", json=bad).status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 429]
    # Even the right password is refused while the account is cooling down.
    good = app_client.post("/api/v1/auth/login", json={**bad, "password": PASSWORD})
    assert_problem(good, 429)
    assert int(good.headers["retry-after"]) >= 1


def test_failed_logins_sent_at_once_are_counted_before_they_are_checked(
    runtime: Runtime, app_client: TestClient
) -> None:
    """Counted as they arrive: ten wrong passwords at once against a limit of three
    get three answers of 401, not ten (before, each passed a count that only the
    failures already finished had raised)."""
    account = signup(app_client)
    bad = {"email": account.email, "password": "not the password"}
    with serve(runtime) as base, ThreadPoolExecutor(10) as pool:
        statuses = list(
            pool.map(
                lambda _: httpx.post(f"{base}/api/v1/auth/login", json=bad, timeout=60).status_code,
                range(10),
            )
        )
    assert sorted(statuses) == [401] * 3 + [429] * 7


def test_a_successful_login_clears_the_failures_and_is_not_one(app_client: TestClient) -> None:
    account = signup(app_client)
    good = {"email": account.email.upper(), "password": PASSWORD}
    bad = {**good, "password": "not the password"}
    login = lambda body: app_client.post("/api/v1/auth/login", json=body).status_code  # noqa: E731
    assert [login(bad), login(bad), login(good)] == [401, 401, 200]
    assert [login(good) for _ in range(5)] == [200] * 5
    assert [login(bad) for _ in range(4)] == [401, 401, 401, 429]


def test_an_invitation_cannot_be_used_to_guess_an_accounts_password(
    app_client: TestClient,
) -> None:
    """Who invites an existing account holds the invitation's token: its wrong
    passwords count as failed logins, per invitation."""
    owner, someone = signup(app_client), signup(app_client)
    invited = app_client.post(
        "/api/v1/invitations", json={"email": someone.email}, headers=owner.headers
    )
    token = invited.json()["token"]

    def accept(password: str) -> int:
        body = {"token": token, "password": password}
        return app_client.post("/api/v1/auth/accept-invite", json=body).status_code

    assert [accept(f"a wrong guess number {n}") for n in range(4)] == [401, 401, 401, 429]
    assert accept(PASSWORD) == 429  # until the window has passed
