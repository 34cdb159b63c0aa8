"""Every action through the HTTP API on real workers, and its exact undo."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tests.bulk.conftest import Desk
from tests.helpers import assert_problem


def test_update_set_and_adjust_then_undo_restores_rows_exactly(desk: Desk, worker: Any) -> None:
    ids = desk.seed(40)
    before = desk.rows_hash()
    run = desk.run(
        {
            "resource": "products",
            "action": "update",
            "where": [{"field": "stock", "op": "gte", "value": 0}],
            "params": {"set": {"currency": "USD"}, "adjust": {"price": "+10%"}},
            "batch_size": 7,
        }
    )
    assert run["status"] == "running" and run["total"] == 40
    done = desk.wait(run["id"])
    assert (done["status"], done["processed"], done["failed"]) == ("completed", 40, 0)
    changed = desk.products(ids)
    assert all(p.currency == "USD" for p in changed.values())
    assert changed[ids[0]].price == Decimal("11.28")  # 10.25 * 1.1 rounded to cents

    undo = desk.post(f"/runs/{run['id']}/undo", {})
    assert undo.status_code == 202, undo.text
    assert desk.wait(undo.json()["id"])["status"] == "completed"
    assert desk.rows_hash() == before
    assert desk.get(f"/runs/{run['id']}/undo").json()["id"] == undo.json()["id"]


@pytest.mark.parametrize(
    ("first", "then"),
    [("archive", "unarchive"), ("soft_delete", "restore")],
)
def test_toggle_actions_and_their_undo(desk: Desk, worker: Any, first: str, then: str) -> None:
    ids = desk.seed(12)
    before = desk.rows_hash()
    run = desk.run({"resource": "products", "action": first, "ids": ids, "batch_size": 5})
    assert desk.wait(run["id"])["status"] == "completed"
    column = "archived_at" if first == "archive" else "deleted_at"
    assert all(getattr(p, column) is not None for p in desk.products(ids).values())
    back = desk.run({"resource": "products", "action": then, "ids": ids[:6]})
    assert desk.wait(back["id"])["status"] == "completed"
    assert sum(getattr(p, column) is None for p in desk.products(ids).values()) == 6
    assert desk.wait(desk.post(f"/runs/{back['id']}/undo", {}).json()["id"])["processed"] == 6
    assert desk.wait(desk.post(f"/runs/{run['id']}/undo", {}).json()["id"])["processed"] == 12
    assert desk.rows_hash() == before


def test_hard_delete_only_soft_deleted_and_undo_brings_same_ids_back(
    desk: Desk, worker: Any
) -> None:
    ids = desk.seed(10)
    before = desk.rows_hash()
    soft = desk.run({"resource": "products", "action": "soft_delete", "ids": ids[:6]})
    desk.wait(soft["id"])
    hard = desk.run({"resource": "products", "action": "hard_delete", "ids": ids})
    done = desk.wait(hard["id"])
    assert (done["status"], done["processed"], done["failed"]) == ("completed_with_errors", 6, 4)
    failures = desk.get(f"/runs/{hard['id']}/failures").json()["items"]
    assert {f["reason"] for f in failures} == {"not soft-deleted; soft delete it first"}
    assert set(desk.products(ids)) == set(ids[6:])

    undo = desk.post(f"/runs/{hard['id']}/undo", {}).json()
    assert desk.wait(undo["id"])["processed"] == 6
    assert set(desk.products(ids)) == set(ids)
    desk.wait(desk.post(f"/runs/{soft['id']}/undo", {}).json()["id"])
    assert desk.rows_hash() == before


def test_adjust_below_minimum_fails_those_records_only(desk: Desk, worker: Any) -> None:
    ids = desk.seed(5)
    run = desk.run(
        {
            "resource": "products",
            "action": "update",
            "ids": ids,
            "params": {"adjust": {"price": "-12"}},
        }
    )
    done = desk.wait(run["id"])
    # prices are 10.25 .. 14.25: only the first two would go negative
    assert (done["status"], done["processed"], done["failed"]) == ("completed_with_errors", 3, 2)
    prices = sorted(p.price for p in desk.products(ids).values())
    expected = ["0.25", "1.25", "2.25", "10.25", "11.25"]
    assert prices == [Decimal(p) for p in expected]


def test_export_action_leaves_records_and_offers_files(desk: Desk, worker: Any) -> None:
    ids = desk.seed(3, name="=HYPERLINK")
    before = desk.rows_hash()
    run = desk.run({"resource": "products", "action": "export", "ids": ids})
    assert desk.wait(run["id"])["processed"] == 3
    assert desk.rows_hash() == before
    csv = desk.get(f"/runs/{run['id']}/export?format=csv")
    assert csv.status_code == 200 and csv.text.count("\n") == 4
    assert "'=HYPERLINK" in csv.text
    xlsx = desk.get(f"/runs/{run['id']}/export?format=xlsx")
    assert xlsx.content[:2] == b"PK"
    pdf = desk.get(f"/runs/{run['id']}/export?format=pdf")
    assert pdf.content.startswith(b"%PDF-1.4") and pdf.content.rstrip().endswith(b"%%EOF")
    assert_problem(desk.post(f"/runs/{run['id']}/undo", {}), 409)


def test_ten_thousand_records_update_and_undo_round_trip(desk: Desk, worker: Any) -> None:
    desk.seed(10_000)
    before = desk.rows_hash()
    run = desk.run(
        {
            "resource": "products",
            "action": "update",
            "where": [{"field": "currency", "op": "eq", "value": "EUR"}],
            "params": {"adjust": {"price": "+5%"}, "set": {"name": "bulk renamed"}},
            "batch_size": 500,
        }
    )
    done = desk.wait(run["id"], timeout=120)
    assert (done["status"], done["processed"], done["failed"]) == ("completed", 10_000, 0)
    assert desk.rows_hash() != before
    undo = desk.post(f"/runs/{run['id']}/undo", {}).json()
    assert desk.wait(undo["id"], timeout=120)["processed"] == 10_000
    assert desk.rows_hash() == before
    assert_problem(desk.post(f"/runs/{undo['id']}/undo", {}), 409)  # no undo of an undo


def test_undo_skips_records_changed_since_unless_forced(desk: Desk, worker: Any) -> None:
    ids = desk.seed(4)
    run = desk.run(
        {"resource": "products", "action": "update", "ids": ids, "params": {"set": {"name": "v2"}}}
    )
    desk.wait(run["id"])
    desk.client.patch(
        f"/api/v1/products/{ids[0]}", json={"name": "edited by hand"}, headers=desk.owner.headers
    )
    undo = desk.wait(desk.post(f"/runs/{run['id']}/undo", {}).json()["id"])
    assert (undo["status"], undo["processed"], undo["failed"]) == ("completed_with_errors", 3, 1)
    reasons = desk.get(f"/runs/{undo['id']}/failures").json()["items"]
    assert reasons[0]["record_id"] == ids[0] and "changed since" in reasons[0]["reason"]
    assert desk.products([ids[0]])[ids[0]].name == "edited by hand"
