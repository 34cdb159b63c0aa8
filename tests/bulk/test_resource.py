"""The generic test resource: every filter operator, every action and a custom action."""

from __future__ import annotations

from typing import Any

import pytest

from opsline.platform.resources import Resource
from tests.bulk._widgets import WIDGETS, Widgets
from tests.bulk.conftest import Desk
from tests.helpers import assert_problem


def _count(desk: Desk, where: list[dict[str, Any]], ids: list[str] | None = None) -> int:
    body = {"resource": "widgets", "action": "archive", "where": where, "ids": ids}
    got = desk.post("/preview", body)
    assert got.status_code == 200, got.text
    count: int = got.json()["count"]
    return count


@pytest.mark.parametrize(
    ("field", "op", "value", "expected"),
    [
        ("qty", "eq", 3, 1),
        ("qty", "ne", 3, 9),
        ("qty", "lt", 3, 3),
        ("qty", "lte", 3, 4),
        ("qty", "gt", 3, 6),
        ("qty", "gte", 3, 7),
        ("qty", "in", [1, 2, 99], 2),
        ("qty", "not_in", [1, 2], 8),
        ("qty", "between", [2, 5], 4),
        ("weight", "between", ["1.0", "2.5"], 4),
        ("code", "is_null", None, 5),
        ("code", "not_null", None, 5),
        ("name", "contains", "get 1", 1),
        ("name", "contains", "%_", 1),
        ("name", "contains", "_", 1),
        ("name", "starts_with", "Widget", 9),
        # Case is ignored by both, on both databases (PostgreSQL's LIKE would not).
        ("name", "starts_with", "wIDGET", 9),
        ("name", "contains", "GET 1", 1),
        ("code", "starts_with", "C-", 5),
        ("code", "starts_with", "c-", 5),
        ("kind", "eq", "b", 3),
        ("kind", "in", ["a", "c"], 7),
        ("active", "eq", True, 5),
    ],
)
def test_every_filter_operator(
    desk: Desk, widget_table: Widgets, field: str, op: str, value: Any, expected: int
) -> None:
    widget_table.seed(desk.owner.tenant_id)
    assert _count(desk, [{"field": field, "op": op, "value": value}]) == expected


def test_conditions_and_ids_are_anded(desk: Desk, widget_table: Widgets) -> None:
    ids = widget_table.seed(desk.owner.tenant_id)
    where = [{"field": "qty", "op": "gte", "value": 2}, {"field": "kind", "op": "eq", "value": "a"}]
    assert _count(desk, where) == 3  # qty 3, 6, 9
    assert _count(desk, where, ids[:4]) == 1  # only qty 3 among 0..3
    assert _count(desk, [], []) == 0


def test_custom_action_applies_set_based_and_undoes_exactly(
    desk: Desk, widget_table: Widgets, worker: Any
) -> None:
    tenant = desk.owner.tenant_id
    widget_table.seed(tenant)
    before = widget_table.rows(tenant)
    body = {
        "resource": "widgets",
        "action": "restock",
        "where": [{"field": "active", "op": "eq", "value": False}],
        "params": {"amount": 10},
        "batch_size": 2,
    }
    preview = desk.post("/preview", body).json()
    assert preview["count"] == 5 and preview["sample"][0]["after"]["active"] is True
    done = desk.wait(desk.run(body)["id"])
    assert (done["status"], done["processed"]) == ("completed", 5)
    after = {r[0]: r for r in widget_table.rows(tenant)}
    for row in before:
        changed = after[row[0]]
        assert changed[4] == (row[4] + 10 if not row[6] else row[4]) and changed[6] is True
    undo = desk.wait(desk.post(f"/runs/{done['id']}/undo", {}).json()["id"])
    assert undo["processed"] == 5
    assert widget_table.rows(tenant) == before


def test_custom_action_params_are_validated(desk: Desk, widget_table: Widgets) -> None:
    body = {"resource": "widgets", "action": "restock", "params": {"amount": 0}}
    assert "amount" in assert_problem(desk.post("/preview", body), 422)["detail"]


def test_every_builtin_action_round_trips(desk: Desk, widget_table: Widgets, worker: Any) -> None:
    tenant = desk.owner.tenant_id
    ids = widget_table.seed(tenant)
    before = widget_table.rows(tenant)
    steps: list[dict[str, Any]] = [
        {"action": "update", "params": {"set": {"kind": "c", "code": None, "active": True}}},
        {"action": "update", "params": {"adjust": {"qty": "+50%", "weight": "-0.25"}}},
        {"action": "archive"},
        {"action": "unarchive"},
        {"action": "soft_delete"},
        {"action": "restore"},
        {"action": "soft_delete"},
        {"action": "hard_delete"},
    ]
    runs = []
    for step in steps:
        done = desk.wait(desk.run({"resource": "widgets", "ids": ids, **step})["id"])
        assert done["status"] in ("completed", "completed_with_errors"), (step, done)
        runs.append(done)
    assert widget_table.rows(tenant) == []
    assert runs[1]["failed"] == 1  # weight 0 - 0.25 is below the minimum
    for done in reversed(runs):
        undo = desk.wait(desk.post(f"/runs/{done['id']}/undo", {}).json()["id"])
        assert undo["status"] == "completed", (done["action"], undo)
    assert widget_table.rows(tenant) == before


def test_hard_delete_is_not_offered_without_a_soft_delete_column() -> None:
    plain = Resource(
        name="plain",
        table=WIDGETS.table,
        fields=WIDGETS.fields,
        permissions=WIDGETS.permissions,
    )
    assert "hard_delete" not in plain.actions()
    assert (
        "hard_delete"
        in Resource(
            name="any",
            table=WIDGETS.table,
            fields=(),
            permissions={"write": "x"},
            hard_delete="any",
        ).actions()
    )


def test_resources_endpoint_lists_fields_operators_and_actions(
    desk: Desk, widget_table: Widgets
) -> None:
    listed = {r["name"]: r for r in desk.get("/resources").json()}
    widgets = listed["widgets"]
    assert {"restock", "update", "hard_delete", "export"} <= {a["name"] for a in widgets["actions"]}
    assert "between" in widgets["operators"] and "starts_with" in widgets["operators"]
    assert {"products", "members"} <= set(listed)
    actions = {a["name"]: a for a in desk.get("/actions").json()}
    assert actions["soft_delete"]["destructive"] and not actions["export"]["undoable"]
