"""Undo force and expiry, confirmation rules, fixed selection, export safety, live progress."""

from __future__ import annotations

import csv
import io
import time
import uuid
import zipfile
from datetime import timedelta
from typing import Any

import orjson
import pytest
from cryptography.exceptions import InvalidTag
from pydantic import SecretStr
from sqlalchemy import func, select, update

from opsline.bulk import _crypto, _export
from opsline.bulk.jobs import apply_chunk_job, purge_expired
from opsline.bulk.models import BulkRun, snapshots_table
from opsline.db import utcnow
from opsline.platform.engine.scheduler import periodic_jobs
from tests import _server
from tests.bulk.conftest import Desk
from tests.bulk.test_safety import _job_ctx
from tests.helpers import add_member, assert_problem, signup


def _rename(desk: Desk, ids: list[str]) -> dict[str, Any]:
    body = {
        "resource": "products",
        "action": "update",
        "ids": ids,
        "params": {"set": {"name": "v2"}},
    }
    return desk.run(body)


def test_undo_with_force_overwrites_records_changed_since(desk: Desk, worker: Any) -> None:
    ids = desk.seed(4)
    before = desk.rows_hash()
    run = desk.wait(_rename(desk, ids)["id"])
    desk.client.patch(
        f"/api/v1/products/{ids[0]}", json={"name": "edited by hand"}, headers=desk.owner.headers
    )
    undo = desk.wait(desk.post(f"/runs/{run['id']}/undo", {"force": True}).json()["id"])
    assert (undo["status"], undo["processed"], undo["failed"]) == ("completed", 4, 0)
    assert desk.products([ids[0]])[ids[0]].name == "Item 0"
    assert desk.rows_hash() == before  # forced: every changed column is back, updated_at too
    assert_problem(desk.post(f"/runs/{run['id']}/undo", {}), 409)  # already undone


def test_expired_undo_data_is_purged_and_undo_refused(desk: Desk, worker: Any) -> None:
    ids = desk.seed(3)
    run = desk.wait(_rename(desk, ids)["id"])
    past = utcnow() - timedelta(seconds=1)
    with desk.runtime.db.unit_of_work() as uow:
        uow.session.execute(
            update(BulkRun).where(BulkRun.id == uuid.UUID(run["id"])).values(undo_expires_at=past)
        )
        uow.session.execute(update(snapshots_table).values(expires_at=past))
    assert purge_expired(_job_ctx(desk)) == 1
    with desk.runtime.db.read() as session:
        assert session.scalar(select(func.count()).select_from(snapshots_table)) == 0
    problem = assert_problem(desk.post(f"/runs/{run['id']}/undo", {}), 409)
    assert "expired" in problem["detail"]
    assert desk.get(f"/runs/{run['id']}").json()["undo_expires_at"] is None


def test_undo_days_set_the_expiry(desk: Desk) -> None:
    body = {"resource": "products", "action": "archive", "ids": desk.seed(1), "undo_days": 90}
    run = desk.run(body)
    expires = desk.get(f"/runs/{run['id']}").json()["undo_expires_at"]
    assert expires.startswith(str((utcnow() + timedelta(days=90)).date()))
    default = desk.run({"resource": "products", "action": "archive", "ids": desk.seed(1)})
    assert default["undo_expires_at"].startswith(str((utcnow() + timedelta(days=7)).date()))


def test_expired_undo_data_is_purged_by_an_hourly_periodic_job() -> None:
    crons = {p.job.name: p.cron for p in periodic_jobs()}
    assert crons["bulk.purge_expired"] == "17 * * * *"


def test_snapshot_holds_exactly_the_changed_fields_sealed_for_the_tenant(desk: Desk) -> None:
    ids = desk.seed(3)
    run = _rename(desk, ids)
    apply_chunk_job(_job_ctx(desk), run_id=run["id"], chunk=0)
    run_id, tenant = uuid.UUID(run["id"]), desk.owner.tenant_id
    with desk.runtime.db.read() as session:
        row = session.execute(
            select(snapshots_table).where(snapshots_table.c.run_id == run_id)
        ).one()
    key = _crypto.undo_key(desk.runtime.settings)
    snapshot = orjson.loads(_crypto.unseal(key, tenant, run_id, 0, row.data))
    assert {tuple(sorted(record)) for record in snapshot["b"]} == {("id", "name", "updated_at")}
    assert sorted(record["name"] for record in snapshot["b"]) == ["Item 0", "Item 1", "Item 2"]
    assert {record["name"] for record in snapshot["a"]} == {"v2"}
    with pytest.raises(InvalidTag):
        _crypto.unseal(key, uuid.uuid4(), run_id, 0, row.data)  # another tenant
    with pytest.raises(InvalidTag):
        _crypto.unseal(key, tenant, uuid.uuid4(), 0, row.data)  # another run
    configured = desk.runtime.settings.model_copy(update={"bulk_undo_key": SecretStr("k" * 32)})
    with pytest.raises(InvalidTag):
        _crypto.unseal(_crypto.undo_key(configured), tenant, run_id, 0, row.data)


def test_preview_warns_of_records_that_would_fail_or_be_refused(desk: Desk) -> None:
    ids = desk.seed(5)  # prices 10.25 .. 14.25
    before = desk.rows_hash()
    body = {
        "resource": "products",
        "action": "update",
        "ids": ids,
        "params": {"adjust": {"price": "-12"}},
    }
    preview = desk.post("/preview", body).json()
    assert preview["count"] == 5
    assert preview["warnings"] == ["2 record(s) would fail: price would be out of range"]
    demote = {
        "resource": "members",
        "action": "update",
        "where": [{"field": "role", "op": "eq", "value": "owner"}],
        "params": {"set": {"role": "manager"}},
    }
    assert desk.post("/preview", demote).json()["warnings"] == [
        "1 record(s) would be refused: the last owner cannot be demoted or removed; "
        "make another member owner first"
    ]
    assert desk.rows_hash() == before


def test_export_streams_every_record_past_one_page(desk: Desk) -> None:
    ids = desk.seed(2 * _export.PAGE + 5)
    where = [{"field": "currency", "op": "eq", "value": "EUR"}]
    run = desk.run({"resource": "products", "action": "export", "where": where})
    exported = desk.get(f"/runs/{run['id']}/export?format=csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert sorted(r["id"] for r in rows) == sorted(ids)


def test_expired_confirmation_token_is_409(desk: Desk, runtime: Any) -> None:
    body = {"resource": "products", "action": "soft_delete", "ids": desk.seed(1)}
    object.__setattr__(runtime.settings, "bulk_confirmation_seconds", -1)
    token = desk.post("/preview", body).json()["confirmation_token"]
    problem = assert_problem(desk.post("/runs", {**body, "confirmation_token": token}), 409)
    assert "expired" in problem["detail"]


def test_token_of_another_user_or_params_is_409(desk: Desk, runtime: Any) -> None:
    object.__setattr__(runtime.settings, "bulk_confirm_threshold", 0)
    body = {"resource": "products", "action": "soft_delete", "ids": desk.seed(1)}
    colleague = add_member(desk.client, desk.owner, "admin")
    theirs = desk.post("/preview", body, colleague).json()["confirmation_token"]
    assert_problem(desk.post("/runs", {**body, "confirmation_token": theirs}), 409)
    rename = {**body, "action": "update", "params": {"set": {"name": "a"}}}
    token = desk.post("/preview", rename).json()["confirmation_token"]
    changed = {**rename, "params": {"set": {"name": "b"}}, "confirmation_token": token}
    assert_problem(desk.post("/runs", changed), 409)


def test_large_non_destructive_run_needs_confirmation(desk: Desk, runtime: Any) -> None:
    object.__setattr__(runtime.settings, "bulk_confirm_threshold", 2)
    body = {"resource": "products", "action": "archive", "ids": desk.seed(3)}
    assert "large" in assert_problem(desk.post("/runs", body), 409)["detail"]
    assert desk.post("/preview", body).json()["confirmation_required"] is True
    assert desk.post("/runs", {**body, "ids": body["ids"][:2]}).status_code == 202


def test_records_created_after_the_start_are_not_touched(desk: Desk) -> None:
    desk.seed(3)
    run = desk.run({"resource": "products", "action": "archive", "batch_size": 10})
    late = desk.seed(2, name="Late")
    apply_chunk_job(_job_ctx(desk), run_id=run["id"], chunk=0)
    assert run["total"] == 3 and desk.get(f"/runs/{run['id']}").json()["processed"] == 3
    assert all(p.archived_at is None for p in desk.products(late).values())


DANGEROUS = ["=1+1", "+1", "-1", "@SUM", "\tx", "\rx"]


def test_exports_guard_every_formula_prefix_in_every_format(desk: Desk, worker: Any) -> None:
    ids = [desk.seed(1, name=prefix)[0] for prefix in DANGEROUS]
    run = desk.wait(desk.run({"resource": "products", "action": "export", "ids": ids})["id"])
    rows = list(csv.DictReader(io.StringIO(desk.get(f"/runs/{run['id']}/export").text)))
    assert sorted(r["name"] for r in rows) == sorted(f"'{p} 0" for p in DANGEROUS)
    xlsx = desk.get(f"/runs/{run['id']}/export?format=xlsx").content
    sheet = zipfile.ZipFile(io.BytesIO(xlsx)).read("xl/worksheets/sheet1.xml").decode()
    assert "'=1+1 0" in sheet and ">=1+1" not in sheet and "<f>" not in sheet
    pdf = desk.get(f"/runs/{run['id']}/export?format=pdf").content
    assert b"'=1+1 0" in pdf and b"'@SUM 0" in pdf


def test_other_tenant_cannot_reach_schedules_or_export_their_records(desk: Desk) -> None:
    other = signup(desk.client, tenant="Other")
    theirs = desk.seed(2, tenant=other.tenant_id)
    mine = desk.post(
        "/schedules",
        {
            "resource": "products",
            "action": "archive",
            "ids": desk.seed(1),
            "run_at": "2099-01-01T00:00:00Z",
        },
    )
    planned = mine.json()["id"] if mine.status_code == 201 else None
    assert planned is not None, mine.text
    moved = {"run_at": "2099-02-01T00:00:00Z"}
    headers = other.headers
    client = desk.client
    assert_problem(
        client.patch(f"/api/v1/bulk/schedules/{planned}", json=moved, headers=headers), 404
    )
    assert_problem(client.delete(f"/api/v1/bulk/schedules/{planned}", headers=headers), 404)
    assert desk.get("/schedules", other).json()["items"] == []
    exported = desk.run({"resource": "products", "action": "export", "ids": theirs})
    assert exported["total"] == 0


def test_progress_is_json_or_a_live_stream_until_the_end(desk: Desk, worker: Any) -> None:
    run = desk.run(
        {"resource": "products", "action": "archive", "ids": desk.seed(30), "batch_size": 5}
    )
    url = f"/api/v1/bulk/runs/{run['id']}/progress"
    events = []
    with desk.client.stream("GET", url, headers=desk.owner.headers) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(orjson.loads(line[6:]))
    assert events[-1]["status"] == "completed" and events[-1]["processed"] == 30
    assert all(e["id"] == run["id"] for e in events)
    as_json = desk.client.get(url, headers={**desk.owner.headers, "Accept": "application/json"})
    assert as_json.json()["status"] == "completed" and as_json.json()["progress"] == 1.0
    token = desk.owner.access_token
    assert desk.client.get(f"{url}?access_token={token}").status_code == 200
    assert_problem(desk.client.get(url), 401)


class TestProgressStreamsPerPrincipal:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {
            "job_poll_seconds": 0.05,
            "bulk_confirm_threshold": 100_000,
            "live_max_streams_per_user": 1,
        }

    def test_one_stream_more_than_the_limit_is_a_429_until_one_closes(self, desk: Desk) -> None:
        # No worker: the run stays queued and its stream stays open.
        run = desk.run({"resource": "products", "action": "archive", "ids": desk.seed(3)})
        path = f"/api/v1/bulk/runs/{run['id']}/progress"
        headers = desk.owner.headers
        with _server.serve(desk.runtime) as base, _server.client(base) as http:
            with http.stream("GET", path, headers=headers) as first:
                lines = first.iter_lines()  # kept: a dropped iterator closes the response
                assert next(lines).startswith("id: ")  # the stream holds its slot
                refused = http.get(path, headers=headers)
                body = assert_problem(refused, 429)
                assert "1 live streams" in body["detail"]
                assert refused.headers["Retry-After"] == "5"
                # The JSON form is no stream and needs no slot.
                as_json = http.get(path, headers={**headers, "Accept": "application/json"})
                assert as_json.status_code == 200
            deadline = time.monotonic() + 10
            while True:  # the slot comes back once the server sees the client gone
                with http.stream("GET", path, headers=headers) as again:
                    if again.status_code == 200:
                        lines = again.iter_lines()
                        assert next(lines).startswith("id: ")
                        break
                assert time.monotonic() < deadline, "the slot never came back"
                time.sleep(0.1)


class TestProgressStreamsCheckTheirCredentials:
    """Like the order feeds: the stream's credentials are checked again every
    ``live_heartbeat_seconds``; a run that stays queued cannot keep a stream
    open past a logout or a lost permission."""

    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {
            "job_poll_seconds": 0.05,
            "bulk_confirm_threshold": 100_000,
            "live_heartbeat_seconds": 0.2,
        }

    @staticmethod
    def _ended_with(lines: Any, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for line in lines:
            if line == "event: end":
                data = next(lines)
                assert data.startswith("data: ")
                problem: dict[str, Any] = orjson.loads(data[6:])
                return problem
            assert time.monotonic() < deadline, "the stream did not end"
        raise AssertionError("the stream closed without an end event")

    def test_a_logout_ends_the_stream_with_401(self, desk: Desk) -> None:
        # No worker: the run stays queued and its stream would stay open.
        run = desk.run({"resource": "products", "action": "archive", "ids": desk.seed(3)})
        path = f"/api/v1/bulk/runs/{run['id']}/progress"
        with _server.serve(desk.runtime) as base, _server.client(base) as http:
            with http.stream("GET", path, headers=desk.owner.headers) as stream:
                lines = stream.iter_lines()
                assert next(lines).startswith("id: ")
                logout = http.post("/api/v1/auth/logout", headers=desk.owner.headers)
                assert logout.status_code == 204
                problem = self._ended_with(lines)
        assert problem["status"] == 401

    def test_a_role_without_bulk_run_ends_the_stream_with_403(self, desk: Desk) -> None:
        manager = add_member(desk.client, desk.owner, "manager")
        run = desk.run({"resource": "products", "action": "archive", "ids": desk.seed(3)})
        path = f"/api/v1/bulk/runs/{run['id']}/progress"
        with _server.serve(desk.runtime) as base, _server.client(base) as http:
            with http.stream("GET", path, headers=manager.headers) as stream:
                lines = stream.iter_lines()
                assert next(lines).startswith("id: ")
                demoted = http.patch(
                    f"/api/v1/members/{manager.user_id}",
                    json={"role": "viewer"},
                    headers=desk.owner.headers,
                )
                assert demoted.status_code == 200, demoted.text
                problem = self._ended_with(lines)
        assert problem["status"] == 403 and "bulk.run" in problem["detail"]
