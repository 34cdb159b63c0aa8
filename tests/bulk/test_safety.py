"""Confirmation, validation, limits, cancel, retries, tenancy and encryption at rest."""

from __future__ import annotations

import contextlib
import sqlite3
import time
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, text

from opsline.bulk.jobs import DEFER_SECONDS, apply_chunk_job, start_scheduled
from opsline.bulk.models import BulkSnapshot
from opsline.db import as_utc, utcnow
from opsline.orders.models import Product
from opsline.platform.engine.context import JobContext
from opsline.platform.engine.models import jobs_table
from tests.bulk.conftest import Desk
from tests.helpers import add_member, assert_problem, signup


def _job_ctx(desk: Desk) -> JobContext:
    return JobContext(
        job_id=0,
        name="test",
        queue="default",
        tenant_id=desk.owner.tenant_id,
        attempt=1,
        max_attempts=5,
        batch_id=None,
        db=desk.runtime.db,
        settings=desk.runtime.settings,
    )


def test_unknown_resource_field_operator_and_action_are_422(desk: Desk) -> None:
    body: dict[str, Any] = {
        "resource": "products",
        "action": "update",
        "params": {"set": {"name": "x"}},
    }
    assert (
        "products"
        in assert_problem(desk.post("/preview", {**body, "resource": "users_x"}), 422)["detail"]
    )
    where = [{"field": "password", "op": "eq", "value": 1}]
    assert (
        "filterable fields"
        in assert_problem(desk.post("/preview", {**body, "where": where}), 422)["detail"]
    )
    where = [{"field": "sku", "op": "regex", "value": "a"}]
    assert (
        "starts_with"
        in assert_problem(desk.post("/preview", {**body, "where": where}), 422)["detail"]
    )
    assert_problem(desk.post("/preview", {**body, "action": "drop_table"}), 422)
    params: dict[str, dict[str, object]] = {"set": {"stock": 5}}
    assert (
        "cannot be set"
        in assert_problem(desk.post("/preview", {**body, "params": params}), 422)["detail"]
    )
    params = {"set": {"price": "-1"}}
    assert_problem(desk.post("/preview", {**body, "params": params}), 422)


def test_preview_counts_samples_and_changes_nothing(desk: Desk) -> None:
    ids = desk.seed(30)
    before = desk.rows_hash()
    body = {
        "resource": "products",
        "action": "update",
        "where": [{"field": "stock", "op": "in", "value": [0, 1]}],
        "params": {"adjust": {"price": "+5%"}},
    }
    preview = desk.post("/preview", body).json()
    assert preview["count"] == sum(1 for i in range(30) if i % 7 in (0, 1))
    sample = preview["sample"][0]
    assert set(sample["before"]) == {"price", "updated_at"}
    assert preview["confirmation_required"] is False and preview["undoable"] is True
    assert desk.rows_hash() == before and len(ids) == 30


def test_destructive_without_token_or_with_another_selections_token_is_409(desk: Desk) -> None:
    ids = desk.seed(4)
    body = {"resource": "products", "action": "soft_delete", "ids": ids}
    problem = assert_problem(desk.post("/runs", body), 409)
    assert "preview" in problem["detail"]
    other = desk.post("/preview", {**body, "ids": ids[:2]}).json()["confirmation_token"]
    assert_problem(desk.post("/runs", {**body, "confirmation_token": other}), 409)
    token = desk.post("/preview", body).json()["confirmation_token"]
    assert desk.post("/runs", {**body, "confirmation_token": token}).status_code == 202


def test_action_needs_the_resources_permission(desk: Desk) -> None:
    member = add_member(desk.client, desk.owner, "member")
    body = {"resource": "products", "action": "archive", "ids": desk.seed(1)}
    assert_problem(desk.post("/preview", body, member), 403)
    viewer = add_member(desk.client, desk.owner, "viewer")
    assert_problem(desk.post("/preview", body, viewer), 403)


def test_redelivered_chunk_changes_nothing_twice(desk: Desk) -> None:
    ids = desk.seed(6)
    run = desk.run(
        {
            "resource": "products",
            "action": "update",
            "ids": ids,
            "params": {"adjust": {"price": "+1"}},
        }
    )
    ctx = _job_ctx(desk)
    apply_chunk_job(ctx, run_id=run["id"], chunk=0)
    prices = {i: p.price for i, p in desk.products(ids).items()}
    apply_chunk_job(ctx, run_id=run["id"], chunk=0)  # redelivery after a crash before ack
    assert {i: p.price for i, p in desk.products(ids).items()} == prices
    with desk.runtime.db.read() as session:
        assert len(session.scalars(select(BulkSnapshot)).all()) == 1
    assert desk.get(f"/runs/{run['id']}").json()["processed"] == 6


def test_records_gone_before_their_chunk_fail_once_with_a_reason(desk: Desk) -> None:
    ids = desk.seed(6)  # prices 10.25 .. 15.25: only the first would go negative
    run = desk.run(
        {
            "resource": "products",
            "action": "update",
            "ids": ids,
            "params": {"adjust": {"price": "-11"}},
        }
    )
    gone = [uuid.UUID(i) for i in ids[1:3]]
    with desk.runtime.db.unit_of_work() as uow:
        uow.session.execute(delete(Product).where(Product.id.in_(gone)))
    apply_chunk_job(_job_ctx(desk), run_id=run["id"], chunk=0)
    done = desk.get(f"/runs/{run['id']}").json()
    assert (done["processed"], done["failed"]) == (3, 3)
    failures = desk.get(f"/runs/{run['id']}/failures").json()["items"]
    assert {f["record_id"]: f["reason"] for f in failures} == {
        ids[0]: "price would be out of range",
        ids[1]: "record no longer exists",
        ids[2]: "record no longer exists",
    }


def test_cancel_mid_run_stops_pending_chunks_and_stays_cancelled(desk: Desk) -> None:
    ids = desk.seed(20)
    before = desk.products(ids)
    run = desk.run({"resource": "products", "action": "archive", "ids": ids, "batch_size": 5})
    apply_chunk_job(_job_ctx(desk), run_id=run["id"], chunk=0)  # one chunk ran
    cancelled = desk.post(f"/runs/{run['id']}/cancel", {})
    assert cancelled.json()["status"] == "cancelled"
    apply_chunk_job(_job_ctx(desk), run_id=run["id"], chunk=1)  # a late job does nothing
    from opsline.platform.engine.worker import Worker

    worker = Worker(desk.runtime.db, desk.runtime.settings, concurrency=2)
    worker.start()
    try:
        time.sleep(0.5)
    finally:
        worker.stop(grace=5)
    done = desk.get(f"/runs/{run['id']}").json()
    assert (done["status"], done["processed"]) == ("cancelled", 5)
    archived = [i for i, p in desk.products(ids).items() if p.archived_at is not None]
    assert len(archived) == 5 and len(before) == 20
    undo = desk.post(f"/runs/{run['id']}/undo", {})
    assert undo.status_code == 202


def test_other_tenant_cannot_select_or_reach_a_run(desk: Desk) -> None:
    other = signup(desk.client, tenant="Other")
    theirs = desk.seed(3, tenant=other.tenant_id)
    preview = desk.post("/preview", {"resource": "products", "action": "archive", "ids": theirs})
    assert preview.json()["count"] == 0
    run = desk.run({"resource": "products", "action": "archive", "ids": desk.seed(2)})
    for path in ("", "/undo", "/failures", "/export?format=csv"):
        assert_problem(desk.get(f"/runs/{run['id']}{path}", other), 404)
    for path in ("/cancel", "/undo"):
        assert_problem(desk.post(f"/runs/{run['id']}{path}", {}, other), 404)
    assert_problem(
        desk.client.get(f"/api/v1/bulk/runs/{run['id']}/progress", headers=other.headers), 404
    )


def test_undo_table_holds_no_plaintext(desk: Desk, backend: str) -> None:
    marker = f"ORIGINAL-{uuid.uuid4().hex}"
    ids = desk.seed(3, name=marker)
    run = desk.run(
        {
            "resource": "products",
            "action": "update",
            "ids": ids,
            "params": {"set": {"name": "renamed"}},
        }
    )
    apply_chunk_job(_job_ctx(desk), run_id=run["id"], chunk=0)
    with desk.runtime.db.unit_of_work() as uow:
        blobs = uow.session.execute(text("SELECT data FROM bulk_snapshots")).scalars().all()
    assert blobs and all(marker.encode() not in blob for blob in blobs)
    if backend != "sqlite":
        return  # PostgreSQL's files are the server's: the stored blobs above are the check
    desk.runtime.db.engine.dispose()
    path = desk.runtime.settings.var_dir / "opsline.db"
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw = path.read_bytes()
    assert marker.encode() not in raw


def test_concurrent_runs_and_max_records_answer_429(desk: Desk, runtime: Any) -> None:
    object.__setattr__(runtime.settings, "bulk_max_concurrent_runs", 1)
    object.__setattr__(runtime.settings, "bulk_max_records", 5)
    ids = desk.seed(6)
    too_many = {"resource": "products", "action": "archive", "ids": ids}
    assert "at most 5" in assert_problem(desk.post("/runs", too_many), 429)["detail"]
    desk.run({"resource": "products", "action": "archive", "ids": ids[:2]})
    second = desk.post("/runs", {"resource": "products", "action": "archive", "ids": ids[2:4]})
    assert "1 bulk runs in progress" in assert_problem(second, 429)["detail"]
    assert second.headers["Retry-After"]


def test_schedule_list_reschedule_cancel_and_start(desk: Desk) -> None:
    ids = desk.seed(3)
    body = {
        "resource": "products",
        "action": "archive",
        "ids": ids,
        "run_at": "2099-01-01T09:00:00",
        "timezone": "Europe/Paris",
    }
    created = desk.post("/schedules", body)
    assert created.status_code == 201, created.text
    run = created.json()
    assert run["status"] == "scheduled" and run["scheduled_at"].startswith("2099-01-01T08:00:00")
    assert [r["id"] for r in desk.get("/schedules").json()["items"]] == [run["id"]]
    moved = desk.client.patch(
        f"/api/v1/bulk/schedules/{run['id']}",
        json={"run_at": "2099-02-01T10:00:00+00:00"},
        headers=desk.owner.headers,
    ).json()
    ctx = _job_ctx(desk)
    start_scheduled(ctx, run_id=run["id"], at=run["scheduled_at"])  # stale slot: nothing
    assert desk.get(f"/runs/{run['id']}").json()["status"] == "scheduled"
    start_scheduled(ctx, run_id=run["id"], at=moved["scheduled_at"])
    assert desk.get(f"/runs/{run['id']}").json()["status"] == "running"
    other = desk.post(
        "/schedules", {**body, "run_at": "2099-03-01T10:00:00Z", "timezone": None}
    ).json()
    gone = desk.client.delete(f"/api/v1/bulk/schedules/{other['id']}", headers=desk.owner.headers)
    assert gone.json()["status"] == "cancelled"
    assert_problem(desk.post("/schedules", {**body, "run_at": "2001-01-01T00:00:00Z"}), 422)


def test_scheduled_run_waits_for_a_free_slot_under_the_concurrent_runs_limit(
    desk: Desk, runtime: Any
) -> None:
    object.__setattr__(runtime.settings, "bulk_max_concurrent_runs", 1)
    ids = desk.seed(4)
    busy = desk.run({"resource": "products", "action": "archive", "ids": ids[:2]})
    body = {"resource": "products", "action": "archive", "ids": ids[2:]}
    scheduled = desk.post("/schedules", {**body, "run_at": "2099-01-01T00:00:00Z"}).json()
    ctx = _job_ctx(desk)
    asked = utcnow()
    start_scheduled(ctx, run_id=scheduled["id"], at=scheduled["scheduled_at"])  # slot taken
    assert desk.get(f"/runs/{scheduled['id']}").json()["status"] == "scheduled"
    with runtime.db.read() as session:
        starts = session.execute(
            select(jobs_table.c.run_at, jobs_table.c.args).where(
                jobs_table.c.name == "bulk.start_scheduled"
            )
        ).all()
    retries = [j for j in starts if as_utc(j.run_at) < asked + timedelta(minutes=1)]
    assert len(retries) == 1 and retries[0].args["run_id"] == scheduled["id"]
    assert as_utc(retries[0].run_at) >= asked + timedelta(seconds=DEFER_SECONDS - 1)
    assert_problem(desk.post("/runs", body), 429)  # as for a direct run
    assert desk.post(f"/runs/{busy['id']}/cancel", {}).json()["status"] == "cancelled"
    start_scheduled(ctx, run_id=scheduled["id"], at=scheduled["scheduled_at"])  # the retry
    assert desk.get(f"/runs/{scheduled['id']}").json()["status"] == "running"


def test_members_last_owner_is_refused_per_record(desk: Desk, worker: Any) -> None:
    admin = add_member(desk.client, desk.owner, "admin")
    members = desk.client.get("/api/v1/members", headers=desk.owner.headers).json()["items"]
    ids = [m["id"] for m in members] if "id" in members[0] else None
    body: dict[str, Any] = {
        "resource": "members",
        "action": "update",
        "where": [{"field": "role", "op": "in", "value": ["owner", "admin"]}],
        "params": {"set": {"role": "manager"}},
    }
    run = desk.run(body)
    done = desk.wait(run["id"])
    assert (done["status"], done["processed"], done["failed"]) == ("completed_with_errors", 1, 1)
    failure = desk.get(f"/runs/{run['id']}/failures").json()["items"][0]
    assert "last owner" in failure["reason"]
    assert ids is None or len(ids) == 2
    me = desk.client.get("/api/v1/me", headers=admin.headers)
    assert me.status_code == 200
