"""Undo again, by record: a new undo of a run whose undo was cancelled, failed or
completed with errors restores the records no earlier undo restored (refused by
the database, skipped as changed since) and leaves alone, uncounted, those an
earlier undo restored.

The jobs are driven directly (no worker), as in test_undo_robust.py, so each
scenario is exact about which chunk of which undo runs when.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import update

from opsline.bulk.jobs import undo_chunk_job
from opsline.orders.models import Product
from tests.bulk.conftest import Desk
from tests.bulk.test_safety import _job_ctx
from tests.bulk.test_undo_robust import (
    _add_product,
    _apply,
    _chunk_records,
    _drop_snapshot,
    _edit_name,
    _finish,
    _queued_chunks,
    _reasons,
    _rename,
    _start_undo,
)
from tests.helpers import assert_problem

EDITED = "edited after the first undo"


def _undo_chunks_then_cancel(desk: Desk, run_id: str, chunks: list[int], **kw: Any) -> str:
    """Start an undo of ``run_id``, run only ``chunks`` of it, cancel it; returns its id."""
    undo = _start_undo(desk, run_id, **kw)
    for chunk in chunks:
        undo_chunk_job(_job_ctx(desk), run_id=undo["id"], chunk=chunk)
    cancelled = desk.post(f"/runs/{undo['id']}/cancel", {})
    assert cancelled.json()["status"] == "cancelled", cancelled.text
    return str(undo["id"])


def _run_to_end(desk: Desk, undo: dict[str, Any]) -> dict[str, Any]:
    for chunk in _queued_chunks(desk, undo["id"]):
        undo_chunk_job(_job_ctx(desk), run_id=undo["id"], chunk=chunk)
    return _finish(desk, undo["id"])


def _counts(run: dict[str, Any]) -> tuple[str, int, int, int]:
    """An undo run's status, total, processed and failed."""
    return run["status"], run["total"], run["processed"], run["failed"]


def _hard_delete(desk: Desk, ids: list[str]) -> dict[str, Any]:
    """Soft then hard delete ``ids`` in chunks of two; returns the hard delete run."""
    _apply(desk, {"resource": "products", "action": "soft_delete", "ids": ids})
    body = {"resource": "products", "action": "hard_delete", "ids": ids, "batch_size": 2}
    hard = _apply(desk, body)
    assert (hard["status"], hard["processed"]) == ("completed", len(ids))
    return hard


def _set(desk: Desk, product_id: str, **values: Any) -> None:
    """Change a stored product directly (a restored soft-deleted one is not in the API)."""
    with desk.runtime.db.unit_of_work() as uow:
        uow.session.execute(
            update(Product).where(Product.id == uuid.UUID(product_id)).values(**values)
        )


def _free_sku(desk: Desk, product_id: str) -> None:
    """The user renames the product that took a deleted record's SKU meanwhile."""
    _set(desk, product_id, sku=f"RENAMED-{uuid.uuid4().hex[:8]}")


def test_a_record_refused_for_a_taken_sku_is_restored_by_the_next_undo_once_freed(
    desk: Desk,
) -> None:
    ids = desk.seed(4)
    before = desk.products(ids)
    hard = _hard_delete(desk, ids)
    kept, clash = sorted(_chunk_records(desk, hard["id"], 0))
    newcomer = _add_product(desk, before[clash].sku)
    # Given a first undo that restored one record of chunk 0, refused the other, and
    # was cancelled before chunk 1; the restored record edited since.
    first = _undo_chunks_then_cancel(desk, hard["id"], [0])
    assert set(_reasons(desk, first)) == {clash}
    assert set(desk.products(ids)) == {kept}
    _set(desk, kept, name=EDITED)
    _free_sku(desk, newcomer)

    second = _start_undo(desk, hard["id"], force=True)
    done = _run_to_end(desk, second)

    assert _queued_chunks(desk, second["id"]) == [0, 1]
    assert _counts(done) == ("completed", 3, 3, 0)
    after = desk.products(ids)
    assert set(after) == set(ids)
    assert after[kept].name == EDITED  # restored by the first undo: not written again
    for rid in set(ids) - {kept}:
        assert (after[rid].sku, after[rid].name) == (before[rid].sku, before[rid].name)


def test_a_record_skipped_as_changed_since_is_restored_by_the_next_undo_with_force(
    desk: Desk,
) -> None:
    ids = desk.seed(4)
    before = desk.products(ids)
    run = _apply(desk, _rename(ids))  # two chunks of two
    kept, changed = sorted(_chunk_records(desk, run["id"], 0))
    _edit_name(desk, changed, "edited by hand before the undo")
    first = _undo_chunks_then_cancel(desk, run["id"], [0])
    assert _reasons(desk, first) == {
        changed: "changed since the action; undo with force to overwrite"
    }
    _edit_name(desk, kept, EDITED)

    second = _start_undo(desk, run["id"], force=True)
    done = _run_to_end(desk, second)

    assert _counts(done) == ("completed", 3, 3, 0)
    names = {i: p.name for i, p in desk.products(ids).items()}
    assert names[kept] == EDITED  # force overwrites what is left, not what was restored
    assert all(names[i] == before[i].name for i in ids if i != kept)


def test_the_next_undo_counts_only_the_records_left_and_fails_those_still_refused(
    desk: Desk,
) -> None:
    ids = desk.seed(6)
    before = desk.products(ids)
    run = _apply(desk, _rename(ids))  # three chunks of two
    changed = sorted(_chunk_records(desk, run["id"], 0))[1]
    _edit_name(desk, changed, "edited by hand")
    _undo_chunks_then_cancel(desk, run["id"], [0, 1])  # chunk 1 restored whole

    second = _start_undo(desk, run["id"])  # no force: the edit still stands in its way
    assert (second["total"], second["processed"], second["failed"]) == (3, 0, 0)
    assert _queued_chunks(desk, second["id"]) == [0, 2]
    # A stray delivery of chunk 1 restores nothing and counts nothing.
    undo_chunk_job(_job_ctx(desk), run_id=second["id"], chunk=1)
    done = _run_to_end(desk, second)

    assert (done["status"], done["processed"], done["failed"], done["progress"]) == (
        "completed_with_errors",
        2,
        1,
        1.0,
    )
    assert set(_reasons(desk, second["id"])) == {changed}  # not the records restored before
    names = {i: p.name for i, p in desk.products(ids).items()}
    assert names[changed] == "edited by hand"
    assert all(names[i] == before[i].name for i in ids if i != changed)
    # Completed with errors: the user may undo again, with force over the edit.
    third = _start_undo(desk, run["id"], force=True)
    assert (third["total"], _queued_chunks(desk, third["id"])) == (1, [0])
    assert _run_to_end(desk, third)["status"] == "completed"
    assert {i: p.name for i, p in desk.products(ids).items()} == {i: before[i].name for i in ids}
    # Completed: nothing is left, and the run was undone.
    problem = assert_problem(desk.post(f"/runs/{run['id']}/undo", {"force": True}), 409)
    assert "already undone" in problem["detail"]


def test_a_third_undo_retries_what_every_earlier_undo_refused(desk: Desk) -> None:
    ids = desk.seed(4)
    before = desk.products(ids)
    hard = _hard_delete(desk, ids)
    clash = sorted(_chunk_records(desk, hard["id"], 0))[1]
    newcomer = _add_product(desk, before[clash].sku)
    first = _undo_chunks_then_cancel(desk, hard["id"], [0])
    # A second undo goes over chunk 0 again before the SKU is freed: refused again.
    second = _undo_chunks_then_cancel(desk, hard["id"], [0], force=True)
    assert set(_reasons(desk, first)) == set(_reasons(desk, second)) == {clash}
    _free_sku(desk, newcomer)

    third = _start_undo(desk, hard["id"])
    done = _run_to_end(desk, third)

    assert third["total"] == 3
    assert (done["status"], done["processed"], done["failed"]) == ("completed", 3, 0)
    assert set(desk.products(ids)) == set(ids)


def test_a_chunk_whose_snapshot_went_after_a_partial_undo_fails_only_the_records_left(
    desk: Desk,
) -> None:
    ids = desk.seed(4)
    run = _apply(desk, _rename(ids))
    kept, changed = sorted(_chunk_records(desk, run["id"], 0))
    _edit_name(desk, changed, "edited by hand")
    _undo_chunks_then_cancel(desk, run["id"], [0])
    _drop_snapshot(desk, run["id"], 0)

    second = _start_undo(desk, run["id"], force=True)
    done = _run_to_end(desk, second)

    assert second["total"] == 3
    assert (done["status"], done["processed"], done["failed"]) == ("completed_with_errors", 2, 1)
    reasons = _reasons(desk, second["id"])
    assert set(reasons) == {changed} and "undo data" in reasons[changed]
    assert "chunk 0" in done["error"]
    assert desk.products([kept])[kept].name != "renamed"
