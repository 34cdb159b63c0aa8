"""Undo under pressure: clashes on restore, undo again after a cancelled or failed undo,
purge while an undo is pending, a chunk whose undo data is gone.

The jobs are driven directly (no worker), as the engine would run them, so each
scenario is exact about which chunk runs when.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    ForeignKey,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    Uuid,
    delete,
    func,
    insert,
    select,
    update,
)

from opsline.bulk.jobs import apply_chunk_job, finish_run, purge_expired, undo_chunk_job
from opsline.bulk.models import BulkRun, items_table, snapshots_table
from opsline.db import UtcDateTime, utcnow
from opsline.orders.models import Product
from opsline.orders.permissions import PRODUCTS_READ, PRODUCTS_WRITE
from opsline.platform.engine.models import Job
from opsline.platform.resources import Field, Resource
from opsline.platform.runtime import Runtime
from tests.bulk._widgets import registered
from tests.bulk.conftest import Desk
from tests.bulk.test_safety import _job_ctx
from tests.helpers import assert_problem

metadata = MetaData()
makers = Table("bulk_test_makers", metadata, Column("id", Uuid(), primary_key=True))
gadgets = Table(
    "bulk_test_gadgets",
    metadata,
    Column("id", Uuid(), primary_key=True),
    Column("tenant_id", Uuid(), nullable=False, index=True),
    Column("code", String(20)),
    Column("maker_id", Uuid(), ForeignKey("bulk_test_makers.id")),
    Column("updated_at", UtcDateTime(), nullable=False),
    UniqueConstraint("tenant_id", "code", name="uq_bulk_test_gadgets_tenant_id_code"),
)
GADGETS = Resource(
    name="gadgets",
    label="Test gadgets (code unique per tenant, maker a foreign key)",
    table=gadgets,
    fields=(Field("id", "uuid"), Field("code", "str", settable=True, nullable=True)),
    permissions={"read": PRODUCTS_READ.name, "write": PRODUCTS_WRITE.name},
    updated_column="updated_at",
    hard_delete="any",
)


@dataclass
class Gadgets:
    runtime: Runtime

    def add(self, tenant: uuid.UUID, *codes: str, maker: uuid.UUID | None = None) -> list[str]:
        rows = [
            {
                "id": uuid.uuid4(),
                "tenant_id": tenant,
                "code": code,
                "maker_id": maker,
                "updated_at": utcnow(),
            }
            for code in codes
        ]
        with self.runtime.db.unit_of_work() as uow:
            uow.session.execute(insert(gadgets), rows)
        return [str(r["id"]) for r in rows]

    def add_maker(self) -> uuid.UUID:
        maker = uuid.uuid4()
        with self.runtime.db.unit_of_work() as uow:
            uow.session.execute(insert(makers).values(id=maker))
        return maker

    def remove_maker(self, maker: uuid.UUID) -> None:
        with self.runtime.db.unit_of_work() as uow:
            uow.session.execute(delete(makers).where(makers.c.id == maker))

    def codes(self, tenant: uuid.UUID) -> dict[str, str | None]:
        with self.runtime.db.read() as session:
            stmt = select(gadgets.c.id, gadgets.c.code).where(gadgets.c.tenant_id == tenant)
            return {str(r.id): r.code for r in session.execute(stmt)}


@pytest.fixture
def gadget_table(runtime: Runtime) -> Iterator[Gadgets]:
    with registered(runtime, metadata, GADGETS):
        yield Gadgets(runtime)


def _finish(desk: Desk, run_id: str) -> dict[str, Any]:
    """The batch's completion callback, run now; returns the run as the API shows it."""
    with desk.runtime.db.read() as session:
        run = session.get(BulkRun, uuid.UUID(run_id))
        assert run is not None and run.batch_id is not None
        batch_id = run.batch_id
    finish_run(_job_ctx(desk), batch_id=batch_id, run_id=uuid.UUID(run_id))
    body: dict[str, Any] = desk.get(f"/runs/{run_id}").json()
    return body


def _queued_chunks(desk: Desk, run_id: str) -> list[int]:
    """The chunk numbers whose jobs the run queued."""
    with desk.runtime.db.read() as session:
        run = session.get(BulkRun, uuid.UUID(run_id))
        assert run is not None
        args = session.scalars(select(Job.args).where(Job.batch_id == run.batch_id)).all()
    return sorted(int(a["chunk"]) for a in args)


def _apply(desk: Desk, body: dict[str, Any]) -> dict[str, Any]:
    """Run ``body`` to its end, chunk by chunk."""
    run = desk.run(body)
    for chunk in _queued_chunks(desk, run["id"]):
        apply_chunk_job(_job_ctx(desk), run_id=run["id"], chunk=chunk)
    return _finish(desk, run["id"])


def _start_undo(desk: Desk, run_id: str, *, force: bool = False) -> dict[str, Any]:
    started = desk.post(f"/runs/{run_id}/undo", {"force": force})
    assert started.status_code == 202, started.text
    body: dict[str, Any] = started.json()
    return body


def _undo(desk: Desk, run_id: str, *, force: bool = False) -> dict[str, Any]:
    """Undo ``run_id`` to its end, chunk by chunk; returns the undo run."""
    undo = _start_undo(desk, run_id, force=force)
    for chunk in _queued_chunks(desk, undo["id"]):
        undo_chunk_job(_job_ctx(desk), run_id=undo["id"], chunk=chunk)
    return _finish(desk, undo["id"])


def _reasons(desk: Desk, run_id: str) -> dict[str, str]:
    items = desk.get(f"/runs/{run_id}/failures").json()["items"]
    return {f["record_id"]: f["reason"] for f in items}


def _rename(ids: list[str], *, batch_size: int = 2) -> dict[str, Any]:
    return {
        "resource": "products",
        "action": "update",
        "ids": ids,
        "params": {"set": {"name": "renamed"}},
        "batch_size": batch_size,
    }


def _edit_name(desk: Desk, record_id: str, name: str) -> None:
    response = desk.client.patch(
        f"/api/v1/products/{record_id}", json={"name": name}, headers=desk.owner.headers
    )
    assert response.status_code == 200, response.text


def _add_product(desk: Desk, sku: str) -> str:
    row = {
        "id": uuid.uuid4(),
        "tenant_id": desk.owner.tenant_id,
        "sku": sku,
        "name": "created since",
        "price": Decimal("1.00"),
        "currency": "EUR",
        "stock": 1,
    }
    with desk.runtime.db.unit_of_work() as uow:
        uow.session.execute(insert(Product), [row])
    return str(row["id"])


# (a) a restore that clashes with a record created since


def test_undo_of_a_hard_delete_restores_the_rest_when_a_sku_was_taken_since(desk: Desk) -> None:
    ids = desk.seed(4)
    before = desk.products(ids)
    sku = before[ids[1]].sku
    _apply(desk, {"resource": "products", "action": "soft_delete", "ids": ids})
    hard = _apply(desk, {"resource": "products", "action": "hard_delete", "ids": ids})
    assert (hard["status"], hard["processed"]) == ("completed", 4)
    newcomer = _add_product(desk, sku)

    undo = _undo(desk, hard["id"])

    assert (undo["status"], undo["processed"], undo["failed"]) == ("completed_with_errors", 3, 1)
    reasons = _reasons(desk, undo["id"])
    assert set(reasons) == {ids[1]}
    assert reasons[ids[1]] == (
        f"not restored: another products record with sku {sku!r} exists now "
        "(unique per tenant: uq_products_tenant_id_sku)"
    )
    after = desk.products()
    assert set(after) == {ids[0], ids[2], ids[3], newcomer}
    assert after[newcomer].name == "created since"
    for rid in (ids[0], ids[2], ids[3]):
        assert (after[rid].sku, after[rid].name) == (before[rid].sku, before[rid].name)


def test_on_the_worker_a_clash_fails_one_record_not_the_chunk(desk: Desk, worker: Any) -> None:
    ids = desk.seed(4)
    sku = desk.products(ids)[ids[2]].sku
    desk.wait(desk.run({"resource": "products", "action": "soft_delete", "ids": ids})["id"])
    hard = desk.wait(desk.run({"resource": "products", "action": "hard_delete", "ids": ids})["id"])
    _add_product(desk, sku)

    undo = desk.wait(desk.post(f"/runs/{hard['id']}/undo", {}).json()["id"])

    assert (undo["status"], undo["processed"], undo["failed"]) == ("completed_with_errors", 3, 1)
    assert undo["error"] is None  # no chunk died: the clash is one record's failure
    assert set(_reasons(desk, undo["id"])) == {ids[2]}
    assert desk.get(f"/runs/{hard['id']}/undo").json()["id"] == undo["id"]


def test_undo_of_a_hard_delete_with_every_sku_taken_since_fails_each_record(desk: Desk) -> None:
    ids = desk.seed(2)
    skus = [p.sku for p in desk.products(ids).values()]
    _apply(desk, {"resource": "products", "action": "soft_delete", "ids": ids})
    hard = _apply(desk, {"resource": "products", "action": "hard_delete", "ids": ids})
    for sku in skus:
        _add_product(desk, sku)

    undo = _undo(desk, hard["id"])

    assert (undo["status"], undo["processed"], undo["failed"]) == ("failed", 0, 2)
    assert set(_reasons(desk, undo["id"])) == set(ids)


def test_undo_of_an_update_restores_the_rest_when_a_unique_value_was_taken_since(
    desk: Desk, gadget_table: Gadgets
) -> None:
    tenant = desk.owner.tenant_id
    ids = gadget_table.add(tenant, "A-1", "B-1", "C-1", "D-1")
    run = _apply(
        desk,
        {"resource": "gadgets", "action": "update", "ids": ids, "params": {"set": {"code": None}}},
    )
    assert (run["status"], run["processed"]) == ("completed", 4)
    newcomer = gadget_table.add(tenant, "B-1")[0]

    undo = _undo(desk, run["id"])

    assert (undo["status"], undo["processed"], undo["failed"]) == ("completed_with_errors", 3, 1)
    reasons = _reasons(desk, undo["id"])
    assert set(reasons) == {ids[1]}
    assert reasons[ids[1]] == (
        "not restored: another gadgets record with code 'B-1' exists now "
        "(unique per tenant: uq_bulk_test_gadgets_tenant_id_code)"
    )
    assert gadget_table.codes(tenant) == {
        ids[0]: "A-1",
        ids[1]: None,
        ids[2]: "C-1",
        ids[3]: "D-1",
        newcomer: "B-1",
    }


def test_undo_of_a_hard_delete_whose_foreign_row_is_gone_restores_the_rest(
    desk: Desk, gadget_table: Gadgets
) -> None:
    tenant = desk.owner.tenant_id
    kept, gone = gadget_table.add_maker(), gadget_table.add_maker()
    ids = gadget_table.add(tenant, "K-1", "K-2", maker=kept) + gadget_table.add(
        tenant, "G-1", maker=gone
    )
    run = _apply(desk, {"resource": "gadgets", "action": "hard_delete", "ids": ids})
    assert (run["status"], run["processed"]) == ("completed", 3)
    gadget_table.remove_maker(gone)

    undo = _undo(desk, run["id"])

    assert (undo["status"], undo["processed"], undo["failed"]) == ("completed_with_errors", 2, 1)
    reasons = _reasons(desk, undo["id"])
    assert set(reasons) == {ids[2]}
    assert reasons[ids[2]].startswith("not restored: refused by the database (")
    assert "foreign key" in reasons[ids[2]].lower()
    assert set(gadget_table.codes(tenant)) == set(ids[:2])


# (b) undo again after an undo that was cancelled or failed


def test_undo_while_an_undo_is_running_is_409_naming_it(desk: Desk) -> None:
    run = _apply(desk, _rename(desk.seed(2)))
    undo = _start_undo(desk, run["id"])
    problem = assert_problem(desk.post(f"/runs/{run['id']}/undo", {}), 409)
    assert undo["id"] in problem["detail"] and "running" in problem["detail"]


def test_a_completed_undo_cannot_be_repeated(desk: Desk) -> None:
    run = _apply(desk, _rename(desk.seed(2)))
    undo = _undo(desk, run["id"])
    problem = assert_problem(desk.post(f"/runs/{run['id']}/undo", {}), 409)
    assert undo["id"] in problem["detail"] and "already undone" in problem["detail"]


def test_a_cancelled_undo_can_be_undone_again_without_restoring_a_chunk_twice(
    desk: Desk,
) -> None:
    ids = desk.seed(6)
    before = desk.products(ids)
    run = _apply(desk, _rename(ids))  # three chunks of two
    first = _start_undo(desk, run["id"])
    undo_chunk_job(_job_ctx(desk), run_id=first["id"], chunk=0)
    cancelled = desk.post(f"/runs/{first['id']}/cancel", {})
    assert cancelled.json()["status"] == "cancelled", cancelled.text
    restored = [i for i, p in desk.products(ids).items() if p.name != "renamed"]
    assert len(restored) == 2
    _edit_name(desk, restored[0], "edited after the first undo")

    second = _start_undo(desk, run["id"], force=True)

    assert second["total"] == 4
    assert _queued_chunks(desk, second["id"]) == [1, 2]
    # A redelivered or stray job for chunk 0 restores nothing again.
    for chunk in (0, 1, 2):
        undo_chunk_job(_job_ctx(desk), run_id=second["id"], chunk=chunk)
    done = _finish(desk, second["id"])
    assert (done["status"], done["processed"], done["failed"]) == ("completed", 4, 0)
    names = {i: p.name for i, p in desk.products(ids).items()}
    assert names[restored[0]] == "edited after the first undo"
    assert all(names[i] == before[i].name for i in ids if i != restored[0])
    assert desk.get(f"/runs/{run['id']}/undo").json()["id"] == second["id"]


def test_a_failed_undo_can_be_undone_again_with_force(desk: Desk) -> None:
    ids = desk.seed(2)
    run = _apply(desk, _rename(ids))
    for rid in ids:
        _edit_name(desk, rid, "edited by hand")
    first = _undo(desk, run["id"])
    assert (first["status"], first["processed"], first["failed"]) == ("failed", 0, 2)

    second = _undo(desk, run["id"], force=True)

    assert (second["status"], second["processed"], second["failed"]) == ("completed", 2, 0)
    assert {p.name for p in desk.products(ids).values()} == {"Item 0", "Item 1"}


# (c) the purge of expired undo data and a pending undo


def _expire(desk: Desk, run_id: str) -> None:
    past = utcnow() - timedelta(seconds=1)
    with desk.runtime.db.unit_of_work() as uow:
        uow.session.execute(
            update(BulkRun).where(BulkRun.id == uuid.UUID(run_id)).values(undo_expires_at=past)
        )
        uow.session.execute(
            update(snapshots_table)
            .where(snapshots_table.c.run_id == uuid.UUID(run_id))
            .values(expires_at=past)
        )


def _stored(desk: Desk, run_id: str) -> tuple[int, int]:
    """How many snapshots and selected items of the run are stored."""
    rid = uuid.UUID(run_id)
    with desk.runtime.db.read() as session:
        snapshots = session.scalar(
            select(func.count()).select_from(snapshots_table).where(snapshots_table.c.run_id == rid)
        )
        items = session.scalar(
            select(func.count()).select_from(items_table).where(items_table.c.run_id == rid)
        )
    return int(snapshots or 0), int(items or 0)


def test_purge_keeps_the_undo_data_of_a_run_whose_undo_is_pending(desk: Desk) -> None:
    ids = desk.seed(4)
    run = _apply(desk, _rename(ids))
    undo = _start_undo(desk, run["id"])
    _expire(desk, run["id"])

    assert purge_expired(_job_ctx(desk)) == 0

    assert _stored(desk, run["id"]) == (2, 4)
    for chunk in _queued_chunks(desk, undo["id"]):
        undo_chunk_job(_job_ctx(desk), run_id=undo["id"], chunk=chunk)
    done = _finish(desk, undo["id"])
    assert (done["status"], done["processed"], done["failed"]) == ("completed", 4, 0)
    assert {p.name for p in desk.products(ids).values()} != {"renamed"}
    assert purge_expired(_job_ctx(desk)) == 2  # the undo ended: now it goes
    assert _stored(desk, run["id"]) == (0, 0)


def test_purge_removes_the_undo_data_of_a_run_whose_undo_was_cancelled(desk: Desk) -> None:
    run = _apply(desk, _rename(desk.seed(4)))
    undo = _start_undo(desk, run["id"])
    assert desk.post(f"/runs/{undo['id']}/cancel", {}).json()["status"] == "cancelled"
    _expire(desk, run["id"])

    assert purge_expired(_job_ctx(desk)) == 2

    assert _stored(desk, run["id"]) == (0, 0)
    problem = assert_problem(desk.post(f"/runs/{run['id']}/undo", {}), 409)
    assert "expired" in problem["detail"]


# (d) an undo chunk whose snapshot is gone


def _drop_snapshot(desk: Desk, run_id: str, chunk: int) -> None:
    with desk.runtime.db.unit_of_work() as uow:
        uow.session.execute(
            delete(snapshots_table).where(
                snapshots_table.c.run_id == uuid.UUID(run_id), snapshots_table.c.chunk == chunk
            )
        )


def _chunk_records(desk: Desk, run_id: str, chunk: int) -> set[str]:
    with desk.runtime.db.read() as session:
        stmt = select(items_table.c.record_id).where(
            items_table.c.run_id == uuid.UUID(run_id), items_table.c.chunk == chunk
        )
        return {str(r) for r in session.scalars(stmt)}


def test_an_undo_chunk_whose_snapshot_vanished_fails_with_the_reason(desk: Desk) -> None:
    ids = desk.seed(4)
    run = _apply(desk, _rename(ids))
    undo = _start_undo(desk, run["id"])
    _drop_snapshot(desk, run["id"], 1)

    for chunk in _queued_chunks(desk, undo["id"]):
        undo_chunk_job(_job_ctx(desk), run_id=undo["id"], chunk=chunk)
    done = _finish(desk, undo["id"])

    assert (done["status"], done["processed"], done["failed"]) == ("completed_with_errors", 2, 2)
    gone = _chunk_records(desk, run["id"], 1)
    reasons = _reasons(desk, undo["id"])
    assert set(reasons) == gone
    assert all("undo data" in reason for reason in reasons.values())
    assert "chunk 1" in done["error"]
    names = {i: p.name for i, p in desk.products(ids).items()}
    assert {i for i, name in names.items() if name == "renamed"} == gone


def test_an_undo_started_after_a_snapshot_was_purged_fails_that_chunk(desk: Desk) -> None:
    ids = desk.seed(4)
    run = _apply(desk, _rename(ids))
    _drop_snapshot(desk, run["id"], 0)

    undo = _undo(desk, run["id"])

    assert (undo["status"], undo["processed"], undo["failed"]) == ("completed_with_errors", 2, 2)
    assert set(_reasons(desk, undo["id"])) == _chunk_records(desk, run["id"], 0)
    assert "chunk 0" in undo["error"]


def test_an_undo_chunk_without_snapshot_nor_selection_fails_with_the_reason(
    desk: Desk,
) -> None:
    run = _apply(desk, _rename(desk.seed(4)))
    undo = _start_undo(desk, run["id"])
    _drop_snapshot(desk, run["id"], 1)
    with desk.runtime.db.unit_of_work() as uow:
        uow.session.execute(delete(items_table).where(items_table.c.run_id == uuid.UUID(run["id"])))

    undo_chunk_job(_job_ctx(desk), run_id=undo["id"], chunk=1)
    done = _finish(desk, undo["id"])

    assert (done["status"], done["failed"]) == ("failed", 4)
    assert "chunk 1" in done["error"] and "undo data" in done["error"]
