"""A run's author is checked again before every chunk, as a scheduled run's is when due.

An author removed from the tenant, or demoted to a role without the action's
permission, stops the run: the chunks applied before stay (and may be undone), the
rest never apply, and the run ends cancelled with the reason. The chunk jobs are
driven directly, so each scenario is exact about which chunk runs when.
"""

from __future__ import annotations

from typing import Any

from opsline.bulk.jobs import apply_chunk_job, undo_chunk_job
from tests.bulk.conftest import Desk
from tests.bulk.test_safety import _job_ctx
from tests.bulk.test_undo_robust import _finish, _queued_chunks, _rename, _start_undo
from tests.helpers import Account, add_member


def _chunks(desk: Desk, run_id: str) -> list[int]:
    chunks = _queued_chunks(desk, run_id)
    assert len(chunks) >= 2, chunks
    return chunks


def _renamed(desk: Desk, ids: list[str]) -> list[str]:
    products = desk.products(ids)
    return sorted(i for i in ids if products[i].name == "renamed")


def _remove(desk: Desk, who: Account) -> None:
    removed = desk.client.delete(f"/api/v1/members/{who.user_id}", headers=desk.owner.headers)
    assert removed.status_code == 204, removed.text


def test_a_run_stops_before_its_next_chunk_once_its_author_was_removed(desk: Desk) -> None:
    manager = add_member(desk.client, desk.owner, "manager")
    ids = desk.seed(6)
    run = desk.run(_rename(ids), manager)
    first, *rest = _chunks(desk, run["id"])
    apply_chunk_job(_job_ctx(desk), run_id=run["id"], chunk=first)
    applied = _renamed(desk, ids)
    assert len(applied) == 2
    _remove(desk, manager)
    for chunk in rest:
        apply_chunk_job(_job_ctx(desk), run_id=run["id"], chunk=chunk)
    done = desk.get(f"/runs/{run['id']}").json()
    assert (done["status"], done["processed"]) == ("cancelled", 2), done
    assert done["error"] == (
        f"stopped: its author (user:{manager.user_id}) is no longer an active member of this tenant"
    )
    assert _renamed(desk, ids) == applied
    assert len(desk.events("bulk.action_cancelled", run["id"])) == 1
    # What was applied may still be undone, by someone who may.
    undo = _start_undo(desk, run["id"])
    for chunk in _queued_chunks(desk, undo["id"]):
        undo_chunk_job(_job_ctx(desk), run_id=undo["id"], chunk=chunk)
    assert _renamed(desk, ids) == []


def _role_changed_between_chunks(desk: Desk, role: str) -> tuple[dict[str, Any], list[str]]:
    """A manager's rename of 4 products in 2 chunks, their role changed in between."""
    manager = add_member(desk.client, desk.owner, "manager")
    ids = desk.seed(4)
    run = desk.run(_rename(ids), manager)
    first, second = _chunks(desk, run["id"])
    apply_chunk_job(_job_ctx(desk), run_id=run["id"], chunk=first)
    changed = desk.client.patch(
        f"/api/v1/members/{manager.user_id}", json={"role": role}, headers=desk.owner.headers
    )
    assert changed.status_code == 200, changed.text
    apply_chunk_job(_job_ctx(desk), run_id=run["id"], chunk=second)
    done: dict[str, Any] = desk.get(f"/runs/{run['id']}").json()
    return done, ids


def test_a_run_stops_once_its_author_lost_the_action_s_permission(desk: Desk) -> None:
    done, ids = _role_changed_between_chunks(desk, "member")
    assert (done["status"], done["processed"]) == ("cancelled", 2), done
    assert (
        done["error"].startswith("stopped: ")
        and ("now has the role 'member', which lacks the permission 'products.write'")
        in done["error"]
    ), done["error"]
    assert len(_renamed(desk, ids)) == 2


def test_a_run_whose_author_still_may_goes_on(desk: Desk) -> None:
    done, ids = _role_changed_between_chunks(desk, "admin")
    assert _renamed(desk, ids) == sorted(ids)
    assert done["processed"] == 4


def test_an_undo_stops_once_its_author_was_removed(desk: Desk) -> None:
    manager = add_member(desk.client, desk.owner, "manager")
    ids = desk.seed(4)
    run = desk.run(_rename(ids))
    for chunk in _chunks(desk, run["id"]):
        apply_chunk_job(_job_ctx(desk), run_id=run["id"], chunk=chunk)
    assert _finish(desk, run["id"])["status"] == "completed"
    # The run is the owner's; the manager undoes it.
    started = desk.post(f"/runs/{run['id']}/undo", {}, manager)
    assert started.status_code == 202, started.text
    undo = started.json()
    first, second = _chunks(desk, undo["id"])
    undo_chunk_job(_job_ctx(desk), run_id=undo["id"], chunk=first)
    _remove(desk, manager)
    undo_chunk_job(_job_ctx(desk), run_id=undo["id"], chunk=second)
    done = desk.get(f"/runs/{undo['id']}").json()
    assert (done["status"], done["processed"]) == ("cancelled", 2), done
    assert "is no longer an active member" in done["error"]
    assert len(_renamed(desk, ids)) == 2
