"""The fluent Python API: fresh and immutable, the same rules as the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from opsline import bulk
from opsline.bulk.errors import ConfirmationRequired, InvalidBulkRequest
from opsline.platform.context import Context, system_principal
from tests.bulk.conftest import Desk


def _ctx(desk: Desk) -> Context:
    runtime = desk.runtime
    return Context(runtime.db, runtime.settings, system_principal(desk.owner.tenant_id))


def test_each_call_returns_a_new_builder_and_shares_no_state(desk: Desk) -> None:
    base = bulk.on("products", ctx=_ctx(desk)).where("stock", "lt", 3)
    raised = base.update(adjust={"price": "+5%"}).in_batches(50).undoable(days=3)
    archived = base.where(currency="EUR").archive()
    assert raised.request().params == {"adjust": {"price": "+5%"}}
    assert (raised.request().batch_size, raised.request().undo_days) == (50, 3)
    assert [c.field for c in archived.request().where] == ["stock", "currency"]
    assert archived.request().params == {} and archived.request().batch_size is None
    assert [c.op for c in base.where(stock__gte=1).conditions] == ["lt", "gte"]
    assert len(base.conditions) == 1  # nothing above changed ``base``
    with pytest.raises(InvalidBulkRequest):
        base.request()  # no action chosen
    again = bulk.on("products", ctx=_ctx(desk))
    assert again.conditions == () and again is not bulk.on("products", ctx=_ctx(desk))


def test_dry_run_then_execute_then_undo(desk: Desk, worker: Any) -> None:
    ids = desk.seed(20)
    before = desk.rows_hash()
    action = (
        bulk.on("products", ctx=_ctx(desk))
        .where(stock__lt=3)
        .ids(ids[:14])
        .update(set={"currency": "USD"}, adjust={"price": "+10"})
        .undoable(days=7)
        .in_batches(4)
    )
    preview = action.dry_run()
    assert preview.count == sum(1 for i in range(14) if i % 7 < 3)
    assert desk.rows_hash() == before
    run = action.confirm(preview.confirmation_token).execute()
    assert desk.wait(str(run.id))["processed"] == preview.count
    undo = desk.post(f"/runs/{run.id}/undo", {}).json()
    assert desk.wait(undo["id"])["status"] == "completed"
    assert desk.rows_hash() == before


def test_destructive_execute_needs_the_dry_runs_token(desk: Desk) -> None:
    doomed = bulk.on("products", ctx=_ctx(desk)).ids(desk.seed(2)).soft_delete()
    with pytest.raises(ConfirmationRequired):
        doomed.execute()
    token = doomed.dry_run().confirmation_token
    with pytest.raises(ConfirmationRequired):
        doomed.ids(desk.seed(1)).confirm(token).execute()  # another selection
    assert doomed.confirm(token).execute().status == "running"


def test_schedule_with_a_time_zone(desk: Desk) -> None:
    planned = (
        bulk.on("products", ctx=_ctx(desk))
        .ids(desk.seed(1))
        .archive()
        .schedule(datetime(2099, 6, 1, 12, 0), "America/New_York")  # noqa: DTZ001 (naive on purpose)
    )
    assert planned.status == "scheduled" and planned.timezone == "America/New_York"
    assert planned.scheduled_at is not None and planned.scheduled_at.hour == 16
    with pytest.raises(InvalidBulkRequest):
        bulk.on("products", ctx=_ctx(desk)).archive().undoable(days=0).request()
