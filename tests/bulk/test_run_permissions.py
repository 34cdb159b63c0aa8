"""Moving, cancelling and starting a run need the permission of its action, held now."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from opsline.bulk.jobs import start_scheduled
from opsline.db import utcnow
from tests.bulk.conftest import Desk
from tests.bulk.test_safety import _job_ctx
from tests.helpers import Account, add_member, assert_problem

LATER = "2099-01-01T09:00:00Z"


def _schedule(desk: Desk, ids: list[str], who: Account, run_at: str = LATER) -> dict[str, Any]:
    """``who`` previews a soft_delete of ``ids`` and schedules it with the token."""
    body = {"resource": "products", "action": "soft_delete", "ids": ids}
    token = desk.post("/preview", body, who).json()["confirmation_token"]
    planned = desk.post("/schedules", {**body, "confirmation_token": token, "run_at": run_at}, who)
    assert planned.status_code == 201, planned.text
    result: dict[str, Any] = planned.json()
    return result


def _move(desk: Desk, run_id: str, who: Account) -> Any:
    return desk.client.patch(
        f"/api/v1/bulk/schedules/{run_id}",
        json={"run_at": "2099-06-01T10:00:00Z"},
        headers=who.headers,
    )


def _assert_lacks_products_write(response: Any) -> None:
    problem = assert_problem(response, 403)
    assert problem["permission"] == "products.write"
    assert "'products.write'" in problem["detail"]


def test_member_cannot_move_or_cancel_an_owners_soft_delete_but_the_owner_can(
    desk: Desk,
) -> None:
    member = add_member(desk.client, desk.owner, "member")
    run = _schedule(desk, desk.seed(3), desk.owner)
    _assert_lacks_products_write(_move(desk, run["id"], member))
    _assert_lacks_products_write(desk.post(f"/runs/{run['id']}/cancel", {}, member))
    unscheduled = desk.client.delete(f"/api/v1/bulk/schedules/{run['id']}", headers=member.headers)
    _assert_lacks_products_write(unscheduled)
    unchanged = desk.get(f"/runs/{run['id']}").json()
    assert (unchanged["status"], unchanged["scheduled_at"]) == ("scheduled", run["scheduled_at"])
    moved = _move(desk, run["id"], desk.owner)
    assert moved.status_code == 200, moved.text
    assert moved.json()["scheduled_at"].startswith("2099-06-01T10:00:00")
    cancelled = desk.post(f"/runs/{run['id']}/cancel", {})
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")


def test_member_cannot_cancel_an_owners_running_soft_delete(desk: Desk) -> None:
    member = add_member(desk.client, desk.owner, "member")
    run = desk.run({"resource": "products", "action": "soft_delete", "ids": desk.seed(2)})
    _assert_lacks_products_write(desk.post(f"/runs/{run['id']}/cancel", {}, member))
    assert desk.get(f"/runs/{run['id']}").json()["status"] == "running"


def _assert_refused(desk: Desk, run: dict[str, Any], ids: list[str], reason: str) -> None:
    done = desk.get(f"/runs/{run['id']}").json()
    assert (done["status"], done["processed"], done["started_at"]) == ("failed", 0, None)
    assert done["error"].startswith("not started: ") and reason in done["error"], done["error"]
    assert all(p.deleted_at is None for p in desk.products(ids).values())
    assert [e["error"] for e in desk.events("bulk.action_failed", run["id"])] == [done["error"]]


def test_a_scheduled_run_whose_author_was_removed_fails_and_changes_nothing(
    desk: Desk, worker: Any
) -> None:
    manager = add_member(desk.client, desk.owner, "manager")
    ids = desk.seed(3)
    run = _schedule(desk, ids, manager, run_at=(utcnow() + timedelta(seconds=2)).isoformat())
    removed = desk.client.delete(f"/api/v1/members/{manager.user_id}", headers=desk.owner.headers)
    assert removed.status_code == 204, removed.text
    desk.wait(run["id"])  # the worker's bulk.start_scheduled, when due
    _assert_refused(
        desk, run, ids, f"its author (user:{manager.user_id}) is no longer an active member"
    )


def test_a_scheduled_run_whose_author_was_demoted_fails_and_changes_nothing(desk: Desk) -> None:
    manager = add_member(desk.client, desk.owner, "manager")
    ids = desk.seed(3)
    run = _schedule(desk, ids, manager)
    demoted = desk.client.patch(
        f"/api/v1/members/{manager.user_id}", json={"role": "member"}, headers=desk.owner.headers
    )
    assert demoted.status_code == 200, demoted.text
    start_scheduled(_job_ctx(desk), run_id=run["id"], at=run["scheduled_at"])
    _assert_refused(
        desk, run, ids, "now has the role 'member', which lacks the permission 'products.write'"
    )


def test_a_scheduled_run_of_a_revoked_api_key_fails(desk: Desk) -> None:
    created = desk.client.post(
        "/api/v1/api-keys",
        json={"name": "nightly", "role": "manager"},
        headers=desk.owner.headers,
    )
    assert created.status_code == 201, created.text
    key = created.json()
    robot = {"X-API-Key": key["key"]}
    ids = desk.seed(2)
    body = {"resource": "products", "action": "soft_delete", "ids": ids}
    token = desk.client.post("/api/v1/bulk/preview", json=body, headers=robot).json()
    planned = desk.client.post(
        "/api/v1/bulk/schedules",
        json={**body, "confirmation_token": token["confirmation_token"], "run_at": LATER},
        headers=robot,
    )
    assert planned.status_code == 201, planned.text
    run = planned.json()
    revoked = desk.client.delete(f"/api/v1/api-keys/{key['id']}", headers=desk.owner.headers)
    assert revoked.status_code == 200, revoked.text
    start_scheduled(_job_ctx(desk), run_id=run["id"], at=run["scheduled_at"])
    _assert_refused(desk, run, ids, f"its API key (apikey:{key['id']}) was revoked")


def test_a_scheduled_run_whose_author_still_may_starts(desk: Desk) -> None:
    manager = add_member(desk.client, desk.owner, "manager")
    run = _schedule(desk, desk.seed(2), manager)
    promoted = desk.client.patch(
        f"/api/v1/members/{manager.user_id}", json={"role": "admin"}, headers=desk.owner.headers
    )
    assert promoted.status_code == 200, promoted.text
    start_scheduled(_job_ctx(desk), run_id=run["id"], at=run["scheduled_at"])
    started = desk.get(f"/runs/{run['id']}").json()
    assert (started["status"], started["error"], started["actor_role"]) == (
        "running",
        None,
        "admin",
    )
