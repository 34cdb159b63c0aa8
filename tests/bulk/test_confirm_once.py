"""A confirmation token confirms one run, and POST /runs honours an Idempotency-Key."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from sqlalchemy import event, func, select

from opsline.bulk.models import BulkRun
from tests.bulk.conftest import Desk
from tests.helpers import assert_problem


def _raise_prices(ids: list[str]) -> dict[str, Any]:
    return {
        "resource": "products",
        "action": "update",
        "ids": ids,
        "params": {"adjust": {"price": "+1"}},
    }


def _confirmed(desk: Desk, body: dict[str, Any]) -> dict[str, Any]:
    preview = desk.post("/preview", body)
    assert preview.status_code == 200, preview.text
    return {**body, "confirmation_token": preview.json()["confirmation_token"]}


def _runs(desk: Desk) -> int:
    with desk.runtime.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(BulkRun)) or 0)


def _post_runs(desk: Desk, body: dict[str, Any], key: str | None = None) -> Any:
    headers = {**desk.owner.headers, **({"Idempotency-Key": key} if key else {})}
    return desk.client.post("/api/v1/bulk/runs", json=body, headers=headers)


def _assert_token_used(response: Any, run_id: str) -> None:
    problem = assert_problem(response, 409)
    assert problem["type"].endswith("/bulk-confirmation-used")
    assert problem["run_id"] == run_id
    assert f"already used by bulk run {run_id}" in problem["detail"]


def test_one_token_three_posts_make_one_run_and_two_409s(desk: Desk, worker: Any) -> None:
    ids = desk.seed(3)
    before = {i: p.price for i, p in desk.products(ids).items()}
    body = _confirmed(desk, _raise_prices(ids))
    first = _post_runs(desk, body)
    assert first.status_code == 202, first.text
    for _ in range(2):
        _assert_token_used(_post_runs(desk, body), first.json()["id"])
    assert desk.wait(first.json()["id"])["status"] == "completed"
    assert {i: p.price for i, p in desk.products(ids).items()} == {
        i: price + Decimal(1) for i, price in before.items()
    }
    assert _runs(desk) == 1


def test_a_token_used_by_a_schedule_cannot_run_or_schedule_again(desk: Desk) -> None:
    target = {"resource": "products", "action": "soft_delete", "ids": desk.seed(2)}
    body = _confirmed(desk, target)
    planned = desk.post("/schedules", {**body, "run_at": "2099-01-01T00:00:00Z"})
    assert planned.status_code == 201, planned.text
    _assert_token_used(desk.post("/runs", body), planned.json()["id"])
    again = desk.post("/schedules", {**body, "run_at": "2099-02-01T00:00:00Z"})
    _assert_token_used(again, planned.json()["id"])
    assert desk.post("/runs", _confirmed(desk, target)).status_code == 202  # a new preview


@contextmanager
def _meeting_at_the_insert(desk: Desk, backend: str) -> Iterator[None]:
    """On PostgreSQL, hold each request at its run's INSERT until both got there: both
    passed every check before either commits, and only the unique index can decide.
    (SQLite runs one writer at a time: the second request finds the first committed.)"""
    if backend != "postgresql":
        yield
        return
    meeting = threading.Barrier(2, timeout=10)

    def hold(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO BULK_RUNS "):
            meeting.wait()

    event.listen(desk.runtime.db.engine, "before_cursor_execute", hold)
    try:
        yield
    finally:
        event.remove(desk.runtime.db.engine, "before_cursor_execute", hold)


def test_two_posts_at_once_with_one_token_make_one_run(
    desk: Desk, backend: str, worker: Any
) -> None:
    ids = desk.seed(4)
    before = {i: p.price for i, p in desk.products(ids).items()}
    body = _confirmed(desk, _raise_prices(ids))
    with _meeting_at_the_insert(desk, backend), ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: _post_runs(desk, body), range(2)))
    assert sorted(a.status_code for a in answers) == [202, 409], [a.text for a in answers]
    started = next(a for a in answers if a.status_code == 202).json()
    _assert_token_used(next(a for a in answers if a.status_code == 409), started["id"])
    assert desk.wait(started["id"])["status"] == "completed"
    assert {i: p.price for i, p in desk.products(ids).items()} == {
        i: price + Decimal(1) for i, price in before.items()
    }
    assert _runs(desk) == 1


def test_same_idempotency_key_and_body_replays_the_first_answer(desk: Desk) -> None:
    body = _confirmed(desk, {"resource": "products", "action": "soft_delete", "ids": desk.seed(3)})
    first = _post_runs(desk, body, key="retry-1")
    assert first.status_code == 202, first.text
    assert "idempotent-replayed" not in first.headers
    # A retry after a timeout: its token is used (by that very run), yet it is answered.
    again = _post_runs(desk, body, key="retry-1")
    assert again.status_code == 202, again.text
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert _runs(desk) == 1


def test_same_idempotency_key_with_another_body_is_422(desk: Desk) -> None:
    ids = desk.seed(3)
    first = _post_runs(desk, _raise_prices(ids), key="k-1")
    assert first.status_code == 202, first.text
    other = _post_runs(desk, {**_raise_prices(ids), "batch_size": 1}, key="k-1")
    assert "different request" in assert_problem(other, 422)["detail"]
    assert _runs(desk) == 1


def test_without_a_key_a_retry_of_a_tokenless_run_is_a_new_run(desk: Desk) -> None:
    # The key is optional: without it (and without a token) nothing ties two posts.
    ids = desk.seed(2)
    assert _post_runs(desk, _raise_prices(ids)).status_code == 202
    assert _post_runs(desk, _raise_prices(ids)).status_code == 202
    assert _runs(desk) == 2


def test_a_malformed_idempotency_key_is_400(desk: Desk) -> None:
    response = _post_runs(desk, _raise_prices(desk.seed(1)), key="bad\tkey")
    assert_problem(response, 400)
    assert _runs(desk) == 0


def test_schedules_replay_with_the_same_key(desk: Desk) -> None:
    body = {**_raise_prices(desk.seed(2)), "run_at": "2099-01-01T00:00:00Z"}
    headers = {**desk.owner.headers, "Idempotency-Key": "plan-1"}
    first = desk.client.post("/api/v1/bulk/schedules", json=body, headers=headers)
    again = desk.client.post("/api/v1/bulk/schedules", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201), again.text
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert _runs(desk) == 1
