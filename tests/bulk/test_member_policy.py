"""The members resource holds bulk runs and their undos to the members API's rules.

Only an owner may change an owner's role, remove an owner or make someone
owner; a tenant never loses its last owner, even to chunks running at once.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, select

from opsline.platform.engine.models import job_errors_table
from opsline.platform.tenancy.models import Membership
from tests.bulk.conftest import FINAL, Desk
from tests.helpers import Account, add_member


def _id(desk: Desk, account: Account) -> str:
    """The membership id of ``account`` in the desk's tenant."""
    with desk.runtime.db.read() as session:
        found = session.scalar(
            select(Membership.id).where(
                Membership.tenant_id == desk.owner.tenant_id,
                Membership.user_id == account.user_id,
            )
        )
    assert found is not None
    return str(found)


def _role(desk: Desk, account: Account) -> str | None:
    with desk.runtime.db.read() as session:
        return session.scalar(
            select(Membership.role).where(
                Membership.tenant_id == desk.owner.tenant_id,
                Membership.user_id == account.user_id,
            )
        )


def _owners(desk: Desk) -> int:
    with desk.runtime.db.read() as session:
        stmt = select(func.count()).where(
            Membership.tenant_id == desk.owner.tenant_id, Membership.role == "owner"
        )
        return int(session.scalar(stmt) or 0)


def _failures(desk: Desk, run_id: str, who: Account | None = None) -> dict[str, str]:
    items = desk.get(f"/runs/{run_id}/failures", who).json()["items"]
    return {item["record_id"]: item["reason"] for item in items}


def _set_role(ids: list[str], role: str, **extra: Any) -> dict[str, Any]:
    return {
        "resource": "members",
        "action": "update",
        "ids": ids,
        "params": {"set": {"role": role}},
        **extra,
    }


def _undo(desk: Desk, run_id: str, who: Account) -> dict[str, Any]:
    """Undo ``run_id`` as ``who`` and wait for it (polling as ``who``: the desk's
    owner may no longer be a member)."""
    started = desk.post(f"/runs/{run_id}/undo", {}, who)
    assert started.status_code == 202, started.text
    deadline = time.monotonic() + 60
    while True:
        body: dict[str, Any] = desk.get(f"/runs/{started.json()['id']}", who).json()
        if body["status"] in FINAL:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def test_admins_bulk_demotion_of_an_owner_is_refused_for_that_record(
    desk: Desk, worker: Any
) -> None:
    second = add_member(desk.client, desk.owner, "owner")
    admin = add_member(desk.client, desk.owner, "admin")
    member = add_member(desk.client, desk.owner, "member")
    run = desk.run(_set_role([_id(desk, second), _id(desk, member)], "viewer"), admin)
    done = desk.wait(run["id"])
    assert (done["status"], done["processed"], done["failed"]) == ("completed_with_errors", 1, 1)
    assert _failures(desk, run["id"], admin) == {
        _id(desk, second): "only an owner may change or remove an owner"
    }
    assert (_role(desk, second), _role(desk, member)) == ("owner", "viewer")


def test_admins_bulk_hard_delete_of_an_owner_is_refused_for_that_record(
    desk: Desk, worker: Any
) -> None:
    second = add_member(desk.client, desk.owner, "owner")
    admin = add_member(desk.client, desk.owner, "admin")
    body = {"resource": "members", "action": "hard_delete", "ids": [_id(desk, second)]}
    run = desk.run(body, admin)
    done = desk.wait(run["id"])
    assert (done["status"], done["processed"], done["failed"]) == ("failed", 0, 1)
    assert "only an owner" in _failures(desk, run["id"], admin)[_id(desk, second)]
    assert _role(desk, second) == "owner"


def test_admins_bulk_grant_of_owner_is_refused(desk: Desk, worker: Any) -> None:
    admin = add_member(desk.client, desk.owner, "admin")
    member = add_member(desk.client, desk.owner, "member")
    done = desk.wait(desk.run(_set_role([_id(desk, member)], "owner"), admin)["id"])
    assert (done["processed"], done["failed"]) == (0, 1)
    assert _role(desk, member) == "member"


def test_owners_bulk_demotion_and_hard_delete_of_an_owner_succeed(desk: Desk, worker: Any) -> None:
    second = add_member(desk.client, desk.owner, "owner")
    third = add_member(desk.client, desk.owner, "owner")
    demoted = desk.wait(desk.run(_set_role([_id(desk, second)], "member"))["id"])
    assert (demoted["status"], demoted["processed"]) == ("completed", 1)
    body = {"resource": "members", "action": "hard_delete", "ids": [_id(desk, third)]}
    removed = desk.wait(desk.run(body)["id"])
    assert (removed["status"], removed["processed"]) == ("completed", 1)
    assert (_role(desk, second), _role(desk, third), _owners(desk)) == ("member", None, 1)


def test_admins_undo_of_an_owners_demotion_makes_no_one_owner(desk: Desk, worker: Any) -> None:
    second = add_member(desk.client, desk.owner, "owner")
    admin = add_member(desk.client, desk.owner, "admin")
    member = add_member(desk.client, desk.owner, "member")
    ids = [_id(desk, second), _id(desk, member)]
    run = desk.run(_set_role(ids, "viewer"))
    assert desk.wait(run["id"])["processed"] == 2
    undo = _undo(desk, run["id"], admin)
    assert (undo["status"], undo["processed"], undo["failed"]) == ("completed_with_errors", 1, 1)
    assert _failures(desk, undo["id"], admin) == {
        _id(desk, second): "only an owner may make someone owner"
    }
    assert (_role(desk, second), _role(desk, member), _owners(desk)) == ("viewer", "member", 1)


def test_owners_undo_of_a_demotion_makes_them_owner_again(desk: Desk, worker: Any) -> None:
    second = add_member(desk.client, desk.owner, "owner")
    run = desk.run(_set_role([_id(desk, second)], "admin"))
    assert desk.wait(run["id"])["processed"] == 1
    undo = _undo(desk, run["id"], desk.owner)
    assert (undo["status"], undo["processed"]) == ("completed", 1)
    assert _role(desk, second) == "owner"


def test_admins_undo_of_an_owners_hard_delete_brings_no_owner_back(desk: Desk, worker: Any) -> None:
    second = add_member(desk.client, desk.owner, "owner")
    admin = add_member(desk.client, desk.owner, "admin")
    member = add_member(desk.client, desk.owner, "member")
    body = {
        "resource": "members",
        "action": "hard_delete",
        "ids": [_id(desk, second), _id(desk, member)],
    }
    run = desk.run(body)
    assert desk.wait(run["id"])["processed"] == 2
    undo = _undo(desk, run["id"], admin)
    assert (undo["processed"], undo["failed"]) == (1, 1)
    assert (_role(desk, second), _role(desk, member), _owners(desk)) == (None, "member", 1)


def test_admins_undo_of_an_owners_promotion_demotes_no_owner(desk: Desk, worker: Any) -> None:
    admin = add_member(desk.client, desk.owner, "admin")
    member = add_member(desk.client, desk.owner, "member")
    run = desk.run(_set_role([_id(desk, member)], "owner"))
    assert desk.wait(run["id"])["processed"] == 1
    undo = _undo(desk, run["id"], admin)
    assert (undo["processed"], undo["failed"]) == (0, 1)
    assert "only an owner" in _failures(desk, undo["id"], admin)[_id(desk, member)]
    assert _role(desk, member) == "owner"


def test_undo_never_demotes_the_last_owner(desk: Desk, worker: Any) -> None:
    member = add_member(desk.client, desk.owner, "member")
    run = desk.run(_set_role([_id(desk, member)], "owner"))
    assert desk.wait(run["id"])["processed"] == 1
    # The new owner removes the one who promoted them: they are the last owner now.
    gone = desk.client.delete(f"/api/v1/members/{desk.owner.user_id}", headers=member.headers)
    assert gone.status_code == 204, gone.text
    undo = _undo(desk, run["id"], member)
    assert (undo["processed"], undo["failed"]) == (0, 1)
    assert "last owner" in _failures(desk, undo["id"], member)[_id(desk, member)]
    assert (_role(desk, member), _owners(desk)) == ("owner", 1)


def test_concurrent_chunks_leave_one_owner(desk: Desk, worker: Any) -> None:
    # Given 8 owners, one chunk each, chunks run by 4 workers at once
    for _ in range(7):
        add_member(desk.client, desk.owner, "owner")
    assert _owners(desk) == 8
    body = {
        "resource": "members",
        "action": "update",
        "where": [{"field": "role", "op": "eq", "value": "owner"}],
        "params": {"set": {"role": "admin"}},
        "batch_size": 1,
    }
    # When every owner is demoted
    done = desk.wait(desk.run(body)["id"])
    # Then exactly one is refused as the last owner
    assert (done["status"], done["processed"], done["failed"]) == ("completed_with_errors", 7, 1)
    assert _owners(desk) == 1
    [reason] = _failures(desk, done["id"]).values()
    assert "last owner" in reason
    # And no chunk deadlocked (each would have been retried: errors, then the wait)
    with desk.runtime.db.read() as session:
        errors = session.scalar(
            select(func.count()).where(job_errors_table.c.tenant_id == desk.owner.tenant_id)
        )
    assert errors == 0


def test_a_member_removed_or_demoted_by_bulk_loses_what_they_handed_out(
    desk: Desk, worker: Any
) -> None:
    """As through the members API: keys capped at the new role, then revoked with the
    sessions when the membership goes; invitations above the role revoked."""
    admin = add_member(desk.client, desk.owner, "admin")
    made = desk.client.post(
        "/api/v1/api-keys", json={"name": "ci", "role": "admin"}, headers=admin.headers
    )
    key = {"X-API-Key": made.json()["key"]}
    invited = desk.client.post(
        "/api/v1/invitations",
        json={"email": "later@example.com", "role": "manager"},
        headers=admin.headers,
    )
    assert invited.status_code == 201

    demoted = desk.wait(desk.run(_set_role([_id(desk, admin)], "member"))["id"])
    assert demoted["status"] == "completed"
    assert desk.client.get("/api/v1/me", headers=key).json()["role"] == "member"
    accepted = desk.client.post(
        "/api/v1/auth/accept-invite", json={"token": invited.json()["token"], "password": "x" * 16}
    )
    assert accepted.status_code == 401  # the manager invitation went with the admin role

    body = {"resource": "members", "action": "hard_delete", "ids": [_id(desk, admin)]}
    removed = desk.wait(desk.run(body)["id"])
    assert removed["status"] == "completed"
    assert desk.client.get("/api/v1/me", headers=key).status_code == 401
    assert desk.client.get("/api/v1/me", headers=admin.headers).status_code == 401
    # Invited back, the old session stays revoked.
    add_member(desk.client, desk.owner, "viewer", email=admin.email)
    refreshed = desk.client.post(
        "/api/v1/auth/refresh", json={"refresh_token": admin.refresh_token}
    )
    assert refreshed.status_code == 401
