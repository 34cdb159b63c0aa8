"""Execution as the issue states it: set-based chunks, live progress, cancel races, schedules."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from time import monotonic
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine

from opsline.bulk import service
from opsline.bulk.jobs import apply_chunk_job, finish_run, undo_chunk_job
from opsline.bulk.models import BulkRun, chunks_table, snapshots_table
from opsline.db import utcnow
from opsline.platform.context import Context, system_principal
from opsline.platform.engine.changes import channel, pubsub_for
from opsline.platform.resources import PolicyCheck, register_resource, unregister_resource
from tests.bulk._widgets import WIDGETS, Widgets
from tests.bulk.conftest import Desk
from tests.bulk.test_safety import _job_ctx


@contextmanager
def _statements(engine: Engine) -> Iterator[list[str]]:
    """Every SQL statement the engine sends while the block runs."""
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(args[2])

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _finish(desk: Desk, run_id: str) -> None:
    """Run the batch's completion callback now (no worker in these tests)."""
    with desk.runtime.db.read() as session:
        run = session.get(BulkRun, uuid.UUID(run_id))
        assert run is not None and run.batch_id is not None
        batch_id = run.batch_id
    finish_run(_job_ctx(desk), batch_id=batch_id, run_id=uuid.UUID(run_id))


def test_a_chunk_costs_the_same_statements_for_5_or_500_records(desk: Desk) -> None:
    applied, undone = [], []
    for size in (5, 500):
        ids = desk.seed(size)
        body = {
            "resource": "products",
            "action": "update",
            "ids": ids,
            "params": {"adjust": {"price": "+1"}},
            "batch_size": size,
        }
        run = desk.run(body)
        with _statements(desk.runtime.db.engine) as seen:
            apply_chunk_job(_job_ctx(desk), run_id=run["id"], chunk=0)
        applied.append(len(seen))
        _finish(desk, run["id"])
        undo = desk.post(f"/runs/{run['id']}/undo", {}).json()
        with _statements(desk.runtime.db.engine) as seen:
            undo_chunk_job(_job_ctx(desk), run_id=undo["id"], chunk=0)
        undone.append(len(seen))
        assert desk.get(f"/runs/{undo['id']}").json()["processed"] == size
    assert applied[0] == applied[1] <= 20, applied
    assert undone[0] == undone[1] <= 20, undone


def test_each_chunk_pushes_progress_with_rate_and_eta(desk: Desk) -> None:
    run = desk.run(
        {"resource": "products", "action": "archive", "ids": desk.seed(6), "batch_size": 2}
    )
    pubsub = pubsub_for(desk.runtime.db.engine)
    assert pubsub is not None
    subscription = pubsub.subscribe(channel(desk.owner.tenant_id))
    pushed: list[int] = []
    try:
        for chunk in (0, 1):
            apply_chunk_job(_job_ctx(desk), run_id=run["id"], chunk=chunk)
        deadline = monotonic() + 10
        while len(pushed) < 2 and monotonic() < deadline:
            message = subscription.get(timeout=0.2)
            if message and message.get("kind") == "bulk_run" and message["id"] == run["id"]:
                pushed.append(message["processed"])
    finally:
        subscription.close()
    assert pushed == [2, 4]
    state = desk.get(f"/runs/{run['id']}").json()
    assert (state["processed"], state["total"]) == (4, 6)
    assert state["progress"] == pytest.approx(4 / 6)
    assert state["rate"] > 0 and state["eta_seconds"] is not None


def test_a_late_completion_never_overwrites_cancelled(desk: Desk) -> None:
    run = desk.run({"resource": "products", "action": "archive", "ids": desk.seed(4)})
    assert desk.post(f"/runs/{run['id']}/cancel", {}).json()["status"] == "cancelled"
    _finish(desk, run["id"])
    assert desk.get(f"/runs/{run['id']}").json()["status"] == "cancelled"


def test_a_chunk_running_when_the_run_is_cancelled_rolls_back(
    desk: Desk, widget_table: Widgets, backend: str
) -> None:
    if backend == "sqlite":
        pytest.skip("SQLite serializes writers: a cancel waits for the running chunk to commit")
    tenant = desk.owner.tenant_id
    widget_table.seed(tenant)
    before = widget_table.rows(tenant)
    ctx = Context(desk.runtime.db, desk.runtime.settings, system_principal(tenant))
    running: dict[str, str] = {}

    def cancel_meanwhile(check: PolicyCheck) -> Mapping[uuid.UUID, str]:
        if "run" in running:  # inside the chunk's transaction; the cancel commits on its own
            service.cancel_run(ctx, uuid.UUID(running["run"]))
        return {}

    resource = dataclasses.replace(WIDGETS, name="widgets_cancelled", policy=cancel_meanwhile)
    register_resource(resource)
    try:
        body = {"resource": resource.name, "action": "update", "params": {"adjust": {"qty": "+1"}}}
        running["run"] = desk.run(body)["id"]
        apply_chunk_job(_job_ctx(desk), run_id=running["run"], chunk=0)
    finally:
        unregister_resource(resource.name)
    state = desk.get(f"/runs/{running['run']}").json()
    assert (state["status"], state["processed"], state["failed"]) == ("cancelled", 0, 0)
    assert widget_table.rows(tenant) == before
    run_id = uuid.UUID(running["run"])
    with desk.runtime.db.read() as session:
        for table in (chunks_table, snapshots_table):
            count = select(func.count()).select_from(table).where(table.c.run_id == run_id)
            assert session.scalar(count) == 0


def test_the_worker_starts_a_scheduled_run_when_it_is_due(desk: Desk, worker: Any) -> None:
    ids = desk.seed(3)
    at = (utcnow() + timedelta(seconds=2)).isoformat()
    body = {"resource": "products", "action": "archive", "ids": ids, "run_at": at}
    created = desk.post("/schedules", body)
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "scheduled"
    done = desk.wait(created.json()["id"], timeout=60)
    assert (done["status"], done["processed"]) == ("completed", 3)
    assert all(p.archived_at is not None for p in desk.products(ids).values())
