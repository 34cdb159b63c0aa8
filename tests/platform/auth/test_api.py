"""Sign-up, login, refresh rotation, logout and /me over HTTP."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.helpers import PASSWORD, add_member, assert_problem, login, signup, unique_email


def test_signup_returns_user_tenant_and_working_tokens(app_client: TestClient) -> None:
    account = signup(app_client, tenant="Blue Widgets")
    me = app_client.get("/api/v1/me", headers=account.headers)
    assert me.status_code == 200
    body = me.json()
    assert body["user"]["email"] == account.email
    assert body["tenant"]["name"] == "Blue Widgets"
    assert body["role"] == "owner"
    assert "members.manage" in body["permissions"]


def test_signup_with_taken_email_is_409(app_client: TestClient) -> None:
    account = signup(app_client)
    again = app_client.post(
        "/api/v1/auth/signup",
        json={"email": account.email.upper(), "password": PASSWORD, "tenant_name": "Other"},
    )
    assert_problem(again, 409)


def test_signup_with_short_password_names_the_field(app_client: TestClient) -> None:
    response = app_client.post(
        "/api/v1/auth/signup",
        json={"email": unique_email(), "password": "short", "tenant_name": "X"},
    )
    body = assert_problem(response, 422)
    assert ["body", "password"] in [e["loc"] for e in body["errors"]]


def test_signup_with_unknown_field_is_422(app_client: TestClient) -> None:
    response = app_client.post(
        "/api/v1/auth/signup",
        json={"email": unique_email(), "password": PASSWORD, "tenant_name": "X", "tenant_id": "x"},
    )
    assert_problem(response, 422)


def test_login_returns_bearer_pair(app_client: TestClient) -> None:
    account = signup(app_client)
    tokens = login(app_client, account.email.upper())
    assert tokens["token_type"] == "bearer"
    assert tokens["expires_in"] > 0
    me = app_client.get("/api/v1/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.status_code == 200


def test_login_with_wrong_password_or_unknown_email_is_401(app_client: TestClient) -> None:
    account = signup(app_client)
    wrong = app_client.post(
        "/api/v1/auth/login", json={"email": account.email, "password": "wrong password!"}
    )
    unknown = app_client.post(
        "/api/v1/auth/login", json={"email": unique_email(), "password": PASSWORD}
    )
    assert_problem(wrong, 401)
    assert_problem(unknown, 401)
    assert wrong.json()["detail"] == unknown.json()["detail"]


def test_member_of_two_tenants_must_pick_one(app_client: TestClient) -> None:
    first = signup(app_client, tenant="First")
    second = signup(app_client, tenant="Second")
    member = add_member(app_client, first, "member")
    invited = app_client.post(
        "/api/v1/invitations",
        json={"email": member.email, "role": "viewer"},
        headers=second.headers,
    )
    accepted = app_client.post(
        "/api/v1/auth/accept-invite", json={"token": invited.json()["token"], "password": PASSWORD}
    )
    assert accepted.status_code == 200

    ambiguous = app_client.post(
        "/api/v1/auth/login", json={"email": member.email, "password": PASSWORD}
    )
    body = assert_problem(ambiguous, 422)
    assert set(body["tenants"]) == {str(first.tenant_id), str(second.tenant_id)}

    tokens = login(app_client, member.email, tenant_id=second.tenant_id)
    me = app_client.get("/api/v1/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.json()["tenant"]["id"] == str(second.tenant_id)
    assert me.json()["role"] == "viewer"
    assert len(me.json()["memberships"]) == 2


def test_login_to_a_tenant_one_is_not_in_is_401(app_client: TestClient) -> None:
    mine = signup(app_client)
    other = signup(app_client)
    response = app_client.post(
        "/api/v1/auth/login",
        json={"email": mine.email, "password": PASSWORD, "tenant_id": str(other.tenant_id)},
    )
    assert_problem(response, 401)


def test_refresh_rotates_the_token(app_client: TestClient) -> None:
    account = signup(app_client)
    rotated = app_client.post("/api/v1/auth/refresh", json={"refresh_token": account.refresh_token})
    assert rotated.status_code == 200
    new = rotated.json()
    assert new["refresh_token"] != account.refresh_token
    again = app_client.post("/api/v1/auth/refresh", json={"refresh_token": new["refresh_token"]})
    assert again.status_code == 200


def test_logout_ends_access_and_refresh(app_client: TestClient) -> None:
    account = signup(app_client)
    assert app_client.post("/api/v1/auth/logout", headers=account.headers).status_code == 204
    assert_problem(app_client.get("/api/v1/me", headers=account.headers), 401)
    refreshed = app_client.post(
        "/api/v1/auth/refresh", json={"refresh_token": account.refresh_token}
    )
    assert_problem(refreshed, 401)


def test_logout_leaves_other_sessions_alone(app_client: TestClient) -> None:
    account = signup(app_client)
    other = login(app_client, account.email)
    app_client.post("/api/v1/auth/logout", headers=account.headers)
    me = app_client.get("/api/v1/me", headers={"Authorization": f"Bearer {other['access_token']}"})
    assert me.status_code == 200


def test_me_without_credentials_is_401_with_challenge(app_client: TestClient) -> None:
    response = app_client.get("/api/v1/me")
    assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


def test_nul_in_a_tenant_or_api_key_name_is_422(app_client: TestClient) -> None:
    response = app_client.post(
        "/api/v1/auth/signup",
        json={"email": unique_email(), "password": PASSWORD, "tenant_name": "a\x00b"},
    )
    body = assert_problem(response, 422)
    assert [e["loc"] for e in body["errors"]] == [["body", "tenant_name"]]
    owner = signup(app_client)
    response = app_client.post("/api/v1/api-keys", json={"name": "a\x00b"}, headers=owner.headers)
    body = assert_problem(response, 422)
    assert [e["loc"] for e in body["errors"]] == [["body", "name"]]
