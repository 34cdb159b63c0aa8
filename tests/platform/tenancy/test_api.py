"""Members: invite, accept, change roles, remove; the last owner is protected."""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import event, select
from sqlalchemy.engine import Engine

from opsline.platform.runtime import Runtime
from opsline.platform.tenancy.models import Membership
from tests._server import serve
from tests.helpers import (
    PASSWORD,
    Account,
    add_member,
    assert_problem,
    login,
    signup,
    unique_email,
)


def test_invited_user_joins_with_the_role_given(app_client: TestClient) -> None:
    owner = signup(app_client)
    manager = add_member(app_client, owner, "manager")
    members = app_client.get("/api/v1/members", headers=owner.headers).json()["items"]
    assert {(m["email"], m["role"]) for m in members} == {
        (owner.email, "owner"),
        (manager.email, "manager"),
    }


def test_invitation_token_works_once(app_client: TestClient) -> None:
    owner = signup(app_client)
    invited = app_client.post(
        "/api/v1/invitations", json={"email": unique_email()}, headers=owner.headers
    ).json()
    body = {"token": invited["token"], "password": PASSWORD}
    assert app_client.post("/api/v1/auth/accept-invite", json=body).status_code == 200
    assert_problem(app_client.post("/api/v1/auth/accept-invite", json=body), 401)


def test_revoked_invitation_cannot_be_accepted(app_client: TestClient) -> None:
    owner = signup(app_client)
    invited = app_client.post(
        "/api/v1/invitations", json={"email": unique_email()}, headers=owner.headers
    ).json()
    deleted = app_client.delete(f"/api/v1/invitations/{invited['id']}", headers=owner.headers)
    assert deleted.status_code == 204
    accepted = app_client.post(
        "/api/v1/auth/accept-invite", json={"token": invited["token"], "password": PASSWORD}
    )
    assert_problem(accepted, 401)


def test_existing_account_must_prove_its_password_to_join(app_client: TestClient) -> None:
    owner = signup(app_client)
    other = signup(app_client)
    invited = app_client.post(
        "/api/v1/invitations", json={"email": other.email}, headers=owner.headers
    ).json()
    wrong = app_client.post(
        "/api/v1/auth/accept-invite", json={"token": invited["token"], "password": "x" * 12}
    )
    assert_problem(wrong, 401)
    right = app_client.post(
        "/api/v1/auth/accept-invite", json={"token": invited["token"], "password": PASSWORD}
    )
    assert right.status_code == 200


def test_inviting_a_member_again_is_409(app_client: TestClient) -> None:
    owner = signup(app_client)
    response = app_client.post(
        "/api/v1/invitations", json={"email": owner.email}, headers=owner.headers
    )
    assert_problem(response, 409)


def test_owner_changes_a_role_and_it_applies_at_once(app_client: TestClient) -> None:
    owner = signup(app_client)
    member = add_member(app_client, owner, "admin")
    changed = app_client.patch(
        f"/api/v1/members/{member.user_id}", json={"role": "viewer"}, headers=owner.headers
    )
    assert changed.status_code == 200
    assert changed.json()["role"] == "viewer"
    # The member's existing token now carries the new role.
    response = app_client.post(
        "/api/v1/invitations", json={"email": unique_email()}, headers=member.headers
    )
    assert_problem(response, 403)


def test_last_owner_cannot_be_demoted_or_removed(app_client: TestClient) -> None:
    owner = signup(app_client)
    demote = app_client.patch(
        f"/api/v1/members/{owner.user_id}", json={"role": "admin"}, headers=owner.headers
    )
    assert_problem(demote, 409)
    remove = app_client.delete(f"/api/v1/members/{owner.user_id}", headers=owner.headers)
    assert_problem(remove, 409)


def test_second_owner_makes_demotion_possible(app_client: TestClient) -> None:
    owner = signup(app_client)
    other = add_member(app_client, owner, "owner")
    demote = app_client.patch(
        f"/api/v1/members/{owner.user_id}", json={"role": "admin"}, headers=other.headers
    )
    assert demote.status_code == 200


def test_admin_cannot_grant_or_touch_owner(app_client: TestClient) -> None:
    owner = signup(app_client)
    admin = add_member(app_client, owner, "admin")
    member = add_member(app_client, owner, "member")
    grant = app_client.patch(
        f"/api/v1/members/{member.user_id}", json={"role": "owner"}, headers=admin.headers
    )
    assert_problem(grant, 403)
    demote = app_client.patch(
        f"/api/v1/members/{owner.user_id}", json={"role": "viewer"}, headers=admin.headers
    )
    assert_problem(demote, 403)
    invite_owner = app_client.post(
        "/api/v1/invitations",
        json={"email": unique_email(), "role": "owner"},
        headers=admin.headers,
    )
    assert_problem(invite_owner, 403)


def test_removed_member_loses_access_at_once(app_client: TestClient) -> None:
    owner = signup(app_client)
    member = add_member(app_client, owner, "member")
    removed = app_client.delete(f"/api/v1/members/{member.user_id}", headers=owner.headers)
    assert removed.status_code == 204
    assert_problem(app_client.get("/api/v1/me", headers=member.headers), 401)
    refreshed = app_client.post(
        "/api/v1/auth/refresh", json={"refresh_token": member.refresh_token}
    )
    assert_problem(refreshed, 401)
    login_again = app_client.post(
        "/api/v1/auth/login", json={"email": member.email, "password": PASSWORD}
    )
    assert_problem(login_again, 401)


def _api_key(client: TestClient, maker: Account, role: str) -> dict[str, Any]:
    made = client.post(
        "/api/v1/api-keys", json={"name": f"{role} key", "role": role}, headers=maker.headers
    )
    assert made.status_code == 201, made.text
    key: dict[str, Any] = made.json()
    assert key["created_by"] == str(maker.user_id)
    return key


def _invite(client: TestClient, inviter: Account, role: str) -> str:
    invited = client.post(
        "/api/v1/invitations", json={"email": unique_email(), "role": role}, headers=inviter.headers
    )
    assert invited.status_code == 201, invited.text
    token: str = invited.json()["token"]
    return token


def _accept(client: TestClient, token: str) -> Any:
    return client.post("/api/v1/auth/accept-invite", json={"token": token, "password": PASSWORD})


def test_a_removed_members_keys_invitations_and_sessions_go_with_them(
    app_client: TestClient,
) -> None:
    owner = signup(app_client)
    admin = add_member(app_client, owner, "admin")
    key = _api_key(app_client, admin, "admin")
    owners_key = _api_key(app_client, owner, "admin")
    invitation = _invite(app_client, admin, "member")
    assert app_client.get("/api/v1/me", headers={"X-API-Key": key["key"]}).status_code == 200

    removed = app_client.delete(f"/api/v1/members/{admin.user_id}", headers=owner.headers)
    assert removed.status_code == 204

    assert_problem(app_client.get("/api/v1/me", headers={"X-API-Key": key["key"]}), 401)
    assert_problem(_accept(app_client, invitation), 401)
    # Invited back, the old tokens stay dead: only a new login works.
    rejoined = add_member(app_client, owner, "viewer", email=admin.email)
    assert_problem(app_client.get("/api/v1/me", headers=admin.headers), 401)
    refreshed = app_client.post("/api/v1/auth/refresh", json={"refresh_token": admin.refresh_token})
    assert_problem(refreshed, 401)
    assert app_client.get("/api/v1/me", headers=rejoined.headers).status_code == 200
    # What others made is untouched.
    assert app_client.get("/api/v1/me", headers={"X-API-Key": owners_key["key"]}).status_code == 200


def test_a_demoted_members_keys_and_invitations_are_held_to_the_new_role(
    app_client: TestClient,
) -> None:
    owner = signup(app_client)
    admin = add_member(app_client, owner, "admin")
    high_key = _api_key(app_client, admin, "admin")
    low_key = _api_key(app_client, admin, "viewer")
    high_invite = _invite(app_client, admin, "manager")
    low_invite = _invite(app_client, admin, "viewer")

    demoted = app_client.patch(
        f"/api/v1/members/{admin.user_id}", json={"role": "member"}, headers=owner.headers
    )
    assert demoted.status_code == 200

    keys = {
        k["id"]: k
        for k in app_client.get("/api/v1/api-keys", headers=owner.headers).json()["items"]
    }
    assert (keys[high_key["id"]]["role"], keys[low_key["id"]]["role"]) == ("member", "viewer")
    me = app_client.get("/api/v1/me", headers={"X-API-Key": high_key["key"]})
    assert me.status_code == 200 and me.json()["role"] == "member"
    assert_problem(_accept(app_client, high_invite), 401)
    assert _accept(app_client, low_invite).status_code == 200


def test_unknown_member_is_404(app_client: TestClient) -> None:
    owner = signup(app_client)
    response = app_client.patch(
        f"/api/v1/members/{owner.tenant_id}", json={"role": "viewer"}, headers=owner.headers
    )
    assert_problem(response, 404)


def test_invalid_role_is_422_naming_the_field(app_client: TestClient) -> None:
    owner = signup(app_client)
    member = add_member(app_client, owner, "member")
    response = app_client.patch(
        f"/api/v1/members/{member.user_id}", json={"role": "emperor"}, headers=owner.headers
    )
    body = assert_problem(response, 422)
    assert body["errors"][0]["loc"] == ["body", "role"]


def test_owner_renames_the_tenant(app_client: TestClient) -> None:
    owner = signup(app_client)
    renamed = app_client.patch("/api/v1/tenant", json={"name": "New Name"}, headers=owner.headers)
    assert renamed.json()["name"] == "New Name"
    assert login(app_client, owner.email)["access_token"]


def test_a_tenant_name_with_a_control_character_is_422(app_client: TestClient) -> None:
    owner = signup(app_client, tenant="Kept")
    for name in ("a\x00b", "two\nlines"):
        response = app_client.patch("/api/v1/tenant", json={"name": name}, headers=owner.headers)
        body = assert_problem(response, 422)
        assert body["errors"][0]["loc"] == ["body", "name"]
        assert "control characters" in body["errors"][0]["msg"]
    assert app_client.get("/api/v1/tenant", headers=owner.headers).json()["name"] == "Kept"


def test_two_owners_demoting_themselves_at_once_leave_one_owner(
    runtime: Runtime, app_client: TestClient
) -> None:
    """Each locks every owner's row in one statement, in one order: one is demoted,
    the other is the last owner (409); never a deadlock's 500, never no owner. Both
    requests are held until each has begun locking (PostgreSQL; on SQLite the
    second waits for the first's write lock before it can lock anything)."""
    first = signup(app_client)
    second = add_member(app_client, first, "owner")
    both_locking = threading.Barrier(2)
    held: set[int] = set()

    def hold(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if "FROM memberships" in statement and "FOR UPDATE" in statement:
            if threading.get_ident() not in held:
                held.add(threading.get_ident())
                with contextlib.suppress(threading.BrokenBarrierError):
                    both_locking.wait(2)

    def demote(owner: Account) -> int:
        return httpx.patch(
            f"{base}/api/v1/members/{owner.user_id}",
            json={"role": "admin"},
            headers=owner.headers,
            timeout=60,
        ).status_code

    event.listen(Engine, "before_cursor_execute", hold)
    try:
        with serve(runtime) as base, ThreadPoolExecutor(2) as pool:
            statuses = sorted(pool.map(demote, (first, second)))
    finally:
        event.remove(Engine, "before_cursor_execute", hold)
    assert statuses == [200, 409]
    with runtime.db.read() as session:
        roles = session.scalars(
            select(Membership.role).where(Membership.tenant_id == first.tenant_id)
        ).all()
    assert sorted(roles) == ["admin", "owner"]
