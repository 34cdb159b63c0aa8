"""Audit records (queryable, exportable), list filters and cursor, events, rate limits."""

from __future__ import annotations

import csv
import io
import uuid
import zipfile
from typing import Any

from sqlalchemy import select

from opsline.platform.engine.models import events_table
from tests.bulk.conftest import Desk
from tests.helpers import add_member, assert_problem

E = events_table.c


def _events(desk: Desk, run_id: str) -> list[str]:
    with desk.runtime.db.read() as session:
        rows = session.execute(
            select(E.type, E.payload)
            .where(E.tenant_id == desk.owner.tenant_id)
            .order_by(E.occurred_at)
        ).all()
    return [r.type for r in rows if r.payload.get("run_id") == run_id]


def test_run_and_undo_each_leave_a_full_audit_record(desk: Desk, worker: Any) -> None:
    ids = desk.seed(3)
    headers = {**desk.owner.headers, "User-Agent": "audit-test/1.0"}
    body = {"resource": "products", "action": "archive", "ids": ids}
    token = desk.post("/preview", body).json()["confirmation_token"]
    started = desk.client.post(
        "/api/v1/bulk/runs", json={**body, "confirmation_token": token}, headers=headers
    )
    run = desk.wait(started.json()["id"])
    undo = desk.wait(desk.post(f"/runs/{run['id']}/undo", {"force": True}).json()["id"])
    assert run["actor"] == f"user:{desk.owner.user_id}" and run["actor_role"] == "owner"
    assert run["tenant_id"] == str(desk.owner.tenant_id)
    assert run["user_agent"] == "audit-test/1.0" and run["ip"]
    assert run["ids"] == ids and run["where"] == [] and run["params"] == {}
    assert (run["total"], run["processed"], run["failed"], run["status"]) == (3, 3, 0, "completed")
    assert run["started_at"] and run["finished_at"] and run["created_at"]
    assert (undo["kind"], undo["undo_of"], undo["params"]) == ("undo", run["id"], {"force": True})
    assert desk.get(f"/runs/{run['id']}").json()["undone_by"] == undo["id"]

    exported = desk.get("/audit/export?format=csv")
    assert exported.status_code == 200 and "attachment" in exported.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [r["id"] for r in rows] == [undo["id"], run["id"]]
    assert rows[1]["user_agent"] == "audit-test/1.0" and rows[1]["processed"] == "3"
    only_undos = list(csv.DictReader(io.StringIO(desk.get("/audit/export?kind=undo").text)))
    assert [(r["id"], r["kind"], r["undo_of"]) for r in only_undos] == [
        (undo["id"], "undo", run["id"])
    ]
    xlsx = desk.get("/audit/export?format=xlsx").content
    assert run["id"] in zipfile.ZipFile(io.BytesIO(xlsx)).read("xl/worksheets/sheet1.xml").decode()
    assert desk.get("/audit/export?format=pdf").content.startswith(b"%PDF")
    assert_problem(desk.get("/audit/export?format=docx"), 422)


def test_list_runs_pages_by_cursor_and_filters(desk: Desk, runtime: Any) -> None:
    object.__setattr__(runtime.settings, "bulk_max_concurrent_runs", 10)
    ids = desk.seed(4)
    made = [desk.run({"resource": "products", "action": "archive", "ids": [i]})["id"] for i in ids]
    exported = desk.run({"resource": "products", "action": "export", "ids": ids})["id"]
    desk.post(f"/runs/{made[0]}/cancel", {})
    seen: list[str] = []
    cursor = None
    while True:
        page = desk.get("/runs?limit=2" + (f"&cursor={cursor}" if cursor else "")).json()
        assert len(page["items"]) <= 2
        seen += [r["id"] for r in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [exported, *reversed(made)]
    assert [r["id"] for r in desk.get("/runs?action=export").json()["items"]] == [exported]
    assert [r["id"] for r in desk.get("/runs?status=cancelled").json()["items"]] == [made[0]]
    assert desk.get("/runs?resource=members").json()["items"] == []
    assert len(desk.get("/runs?resource=products&status=running").json()["items"]) == 4


def test_every_lifecycle_event_is_on_the_event_log(desk: Desk, worker: Any) -> None:
    ids = desk.seed(4)
    run = desk.wait(desk.run({"resource": "products", "action": "archive", "ids": ids})["id"])
    undo = desk.wait(desk.post(f"/runs/{run['id']}/undo", {}).json()["id"])
    assert _events(desk, run["id"]) == [
        "bulk.action_started",
        "bulk.action_progress",
        "bulk.action_completed",
        "bulk.action_undone",
    ]
    assert _events(desk, undo["id"]) == ["bulk.action_progress"]
    failing = desk.run({"resource": "products", "action": "hard_delete", "ids": ids})
    assert desk.wait(failing["id"])["status"] == "failed"
    assert _events(desk, failing["id"])[-1] == "bulk.action_failed"
    worker.stop(grace=5)
    stopped = desk.run({"resource": "products", "action": "archive", "ids": ids})
    desk.post(f"/runs/{stopped['id']}/cancel", {})
    assert _events(desk, stopped["id"]) == ["bulk.action_started", "bulk.action_cancelled"]


def test_runs_are_rate_limited_per_user_and_per_tenant(desk: Desk, runtime: Any) -> None:
    object.__setattr__(runtime.settings, "bulk_rate_limit_user", "2/minute")
    object.__setattr__(runtime.settings, "bulk_rate_limit_tenant", "3/minute")
    object.__setattr__(runtime.settings, "bulk_max_concurrent_runs", 10)
    body = {"resource": "products", "action": "export", "ids": desk.seed(1)}
    assert desk.post("/runs", body).status_code == 202
    assert desk.post("/runs", body).status_code == 202
    refused = desk.post("/runs", body)
    problem = assert_problem(refused, 429)
    assert "rate limit for bulk runs" in problem["detail"] and refused.headers["Retry-After"]
    colleague = add_member(desk.client, desk.owner, "admin")
    assert desk.post("/runs", body, colleague).status_code == 202
    refused = desk.post("/runs", body, colleague)  # the colleague's first, the tenant's fourth
    assert "rate limit for this tenant" in assert_problem(refused, 429)["detail"]
    assert_problem(desk.post(f"/runs/{uuid.uuid4()}/undo", {}, colleague), 429)
