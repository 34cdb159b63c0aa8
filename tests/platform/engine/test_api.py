"""Admin API over jobs, events and batches: tenant-scoped, jobs.admin only."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import update

from opsline.platform.engine.enqueue import JobSpec, enqueue_many
from opsline.platform.engine.events import publish
from opsline.platform.engine.models import jobs_table
from opsline.platform.runtime import Runtime
from tests.helpers import add_member, assert_problem, signup
from tests.platform.engine import sample_jobs
from tests.platform.engine.sample_events import OrderApproved

J = jobs_table.c


def _kill(runtime: Runtime, job_id: int) -> None:
    with runtime.db.unit_of_work() as uow:
        uow.session.execute(
            update(jobs_table).where(J.id == job_id).values(state="dead", attempt=J.max_attempts)
        )


def test_admin_lists_only_own_tenants_jobs(app_client: TestClient, runtime: Runtime) -> None:
    a, b = signup(app_client, tenant="A"), signup(app_client, tenant="B")
    enqueue_many(
        runtime.db, [JobSpec("tests.echo", {"value": n}, tenant_id=a.tenant_id) for n in range(3)]
    )
    b_job = sample_jobs.echo.enqueue(runtime.db, tenant_id=b.tenant_id, value=9)
    first = app_client.get("/api/v1/jobs?limit=2", headers=a.headers).json()
    second = app_client.get(
        f"/api/v1/jobs?limit=2&cursor={first['next_cursor']}", headers=a.headers
    ).json()
    ids = [job["id"] for job in first["items"] + second["items"]]
    assert len(ids) == 3 and b_job not in ids and second["next_cursor"] is None
    assert_problem(app_client.get(f"/api/v1/jobs/{b_job}", headers=a.headers), 404)
    assert_problem(app_client.post(f"/api/v1/jobs/{b_job}/cancel", headers=a.headers), 404)


def test_member_without_jobs_admin_gets_403(app_client: TestClient) -> None:
    owner = signup(app_client)
    member = add_member(app_client, owner, "member")
    assert_problem(app_client.get("/api/v1/jobs", headers=member.headers), 403)


def test_job_ids_outside_bigint_are_a_422_not_a_500(app_client: TestClient) -> None:
    a = signup(app_client)
    for job_id in (0, -1, 2**63, 10**30):
        assert_problem(app_client.get(f"/api/v1/jobs/{job_id}", headers=a.headers), 422)
        for action in ("retry", "cancel"):
            response = app_client.post(f"/api/v1/jobs/{job_id}/{action}", headers=a.headers)
            assert_problem(response, 422)
    assert_problem(app_client.get(f"/api/v1/jobs/{2**63 - 1}", headers=a.headers), 404)


def test_retry_cancel_and_flush_dead_jobs(app_client: TestClient, runtime: Runtime) -> None:
    a = signup(app_client)
    dead = sample_jobs.echo.enqueue(runtime.db, tenant_id=a.tenant_id, value=1)
    pending = sample_jobs.echo.enqueue(runtime.db, tenant_id=a.tenant_id, value=2)
    _kill(runtime, dead)
    listed = app_client.get("/api/v1/jobs/dead", headers=a.headers).json()["items"]
    assert [job["id"] for job in listed] == [dead]
    retried = app_client.post(f"/api/v1/jobs/{dead}/retry", headers=a.headers).json()
    assert (retried["state"], retried["max_attempts"]) == ("available", 21)
    cancelled = app_client.post(f"/api/v1/jobs/{pending}/cancel", headers=a.headers).json()
    assert cancelled["state"] == "cancelled"
    assert_problem(app_client.post(f"/api/v1/jobs/{pending}/cancel", headers=a.headers), 409)
    _kill(runtime, dead)
    assert app_client.post("/api/v1/jobs/retry-dead", headers=a.headers).json() == {"count": 1}
    _kill(runtime, dead)
    assert app_client.delete("/api/v1/jobs/dead", headers=a.headers).json() == {"count": 1}
    assert_problem(app_client.get(f"/api/v1/jobs/{dead}", headers=a.headers), 404)


def test_job_detail_shows_each_failed_attempt(app_client: TestClient, runtime: Runtime) -> None:
    from tests.platform.engine.helpers import job_row, running_worker, wait_until

    a = signup(app_client)
    job_id = sample_jobs.flaky.enqueue(runtime.db, tenant_id=a.tenant_id, fail_times=9, key="x")
    with running_worker(runtime.db, runtime.settings):
        wait_until(lambda: job_row(runtime.db, job_id).state == "dead")
    detail = app_client.get(f"/api/v1/jobs/{job_id}", headers=a.headers).json()
    assert [e["attempt"] for e in detail["errors"]] == [1, 2, 3]
    assert detail["errors"][0]["error_type"] == "ValueError"


def test_event_log_is_tenant_scoped_and_filterable(
    app_client: TestClient, runtime: Runtime
) -> None:
    import uuid

    a, b = signup(app_client, tenant="A"), signup(app_client, tenant="B")
    with runtime.db.unit_of_work() as uow:
        for tenant in (a.tenant_id, a.tenant_id, b.tenant_id):
            publish(uow, OrderApproved(tenant_id=tenant, order_id=uuid.uuid4(), amount_cents=1))
    events = app_client.get("/api/v1/events?type=tests.order_approved", headers=a.headers).json()[
        "items"
    ]
    assert len(events) == 2
    assert {e["tenant_id"] for e in events} == {str(a.tenant_id)}
    none = app_client.get("/api/v1/events?type=other.type", headers=a.headers).json()
    assert none["items"] == []


def _cursor(values: list[object]) -> str:
    import base64
    import json

    raw = json.dumps(values, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_bad_event_log_times_and_windows_are_422(app_client: TestClient) -> None:
    a = signup(app_client)
    for name in ("since", "until"):
        for moment in ("2024-01-01T00:00:00", "9999-12-31T23:59:59-14:00"):
            response = app_client.get("/api/v1/events", params={name: moment}, headers=a.headers)
            body = assert_problem(response, 422)
            assert [e["loc"] for e in body["errors"]] == [["query", name]]
    window = {"since": "2024-01-02T00:00:00Z", "until": "2024-01-01T00:00:00Z"}
    body = assert_problem(app_client.get("/api/v1/events", params=window, headers=a.headers), 422)
    assert "since" in body["detail"] and "until" in body["detail"]
    fine = {"since": "2024-01-01T00:00:00+01:00", "until": "2024-01-01T00:00:00Z"}
    assert app_client.get("/api/v1/events", params=fine, headers=a.headers).status_code == 200


def test_cursors_and_filters_that_cannot_bind_are_422(app_client: TestClient) -> None:
    import uuid

    a = signup(app_client)
    naive = _cursor(["2024-01-01T00:00:00", str(uuid.uuid4())])
    queries = [
        ("/api/v1/events", {"cursor": naive}),
        ("/api/v1/jobs", {"cursor": _cursor([2**63])}),
        ("/api/v1/jobs", {"cursor": _cursor(["1"])}),
        ("/api/v1/jobs", {"queue": "a\x00b"}),
        ("/api/v1/jobs", {"name": "a\x00b"}),
        ("/api/v1/events", {"type": "a\x00b"}),
    ]
    for path, params in queries:
        response = app_client.get(path, params=params, headers=a.headers)
        body = assert_problem(response, 422)
        assert [e["loc"] for e in body["errors"]] == [["query", next(iter(params))]], path
