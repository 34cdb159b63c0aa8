"""Every action through the HTTP API on real workers, and its exact undo."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from opsline.platform.tenancy.models import Membership
from tests.bulk._widgets import Widgets
from tests.bulk.conftest import Desk
from tests.helpers import add_member, assert_problem


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


def test_adjust_past_the_declared_maximum_fails_records_and_never_the_chunk(
    desk: Desk, worker: Any
) -> None:
    ids = desk.seed(2)
    body = {
        "resource": "products",
        "action": "update",
        "ids": ids,
        "params": {"adjust": {"price": "+999999999999"}},
    }
    preview = desk.post("/preview", body)
    assert preview.status_code == 200, preview.text
    assert preview.json()["warnings"] == ["2 record(s) would fail: price would be out of range"]
    done = desk.wait(desk.run(body)["id"])
    assert (done["status"], done["processed"], done["failed"], done["error"]) == (
        "failed",
        0,
        2,
        None,
    )
    reasons = {f["reason"] for f in desk.get(f"/runs/{done['id']}/failures").json()["items"]}
    assert reasons == {"price would be out of range"}


def test_adjust_beyond_what_the_column_type_holds_fails_those_records_only(
    desk: Desk, widget_table: Widgets, worker: Any
) -> None:
    tenant = desk.owner.tenant_id
    widget_table.seed(tenant)  # qty 0..9 in an INTEGER column, no maximum declared
    top = 2**31 - 1
    body = {"resource": "widgets", "action": "update", "params": {"adjust": {"qty": f"+{top}"}}}
    preview = desk.post("/preview", body).json()
    assert preview["warnings"] == ["9 record(s) would fail: qty would be out of range"]
    assert sorted(s["after"]["qty"] for s in preview["sample"]) == [top + i for i in range(10)]
    done = desk.wait(desk.run(body)["id"])
    assert (done["status"], done["processed"], done["failed"], done["error"]) == (
        "completed_with_errors",
        1,
        9,
        None,
    )
    assert sorted(row[4] for row in widget_table.rows(tenant)) == [*range(1, 10), top]


def _memberships(desk: Desk) -> list[tuple[Any, ...]]:
    with desk.runtime.db.read() as session:
        stmt = (
            select(Membership.__table__)
            .where(Membership.tenant_id == desk.owner.tenant_id)
            .order_by(Membership.id)
        )
        return [tuple(row) for row in session.execute(stmt)]


def test_members_hard_delete_needs_no_soft_delete_and_undo_brings_the_same_rows_back(
    desk: Desk, worker: Any
) -> None:
    add_member(desk.client, desk.owner, "admin")
    add_member(desk.client, desk.owner, "member")
    before = _memberships(desk)
    body = {
        "resource": "members",
        "action": "hard_delete",
        "where": [{"field": "role", "op": "in", "value": ["owner", "admin", "member"]}],
    }
    done = desk.wait(desk.run(body)["id"])
    assert (done["status"], done["processed"], done["failed"]) == ("completed_with_errors", 2, 1)
    assert [row[3] for row in _memberships(desk)] == ["owner"]  # the last owner is refused
    undo = desk.wait(desk.post(f"/runs/{done['id']}/undo", {}).json()["id"])
    assert (undo["status"], undo["processed"]) == ("completed", 2)
    assert _memberships(desk) == before
