"""A chunk holds its records from the capture of their old values to its commit.

An edit made while a chunk runs waits for it and then lands on the chunk's
result, so undo sees the record changed since and leaves the edit alone. On
PostgreSQL, without the chunk's row locks, the edit committed between the
capture and the UPDATE was built upon (10.25 +10% became 99.00 +10%) and undo
then restored 10.25 over it, seeing no conflict.
"""

from __future__ import annotations

import threading
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import event, update
from sqlalchemy.engine import Engine

from opsline.orders.models import Product
from tests.bulk.conftest import Desk


def test_an_edit_during_a_chunk_lands_after_it_and_undo_keeps_it(desk: Desk, worker: Any) -> None:
    [record] = desk.seed(1)
    product_id = uuid.UUID(record)
    assert desk.products()[record].price == Decimal("10.25")
    edits: list[threading.Thread] = []

    def edit() -> None:
        with desk.runtime.db.engine.begin() as conn:
            conn.execute(
                update(Product).where(Product.id == product_id).values(price=Decimal("99.00"))
            )

    def edit_before_the_update(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if not edits and statement.lstrip().upper().startswith("UPDATE PRODUCTS"):
            edits.append(threading.Thread(target=edit))
            edits[0].start()
            edits[0].join(0.5)  # committed by now, unless the chunk holds the row

    event.listen(Engine, "before_cursor_execute", edit_before_the_update)
    try:
        body = {
            "resource": "products",
            "action": "update",
            "ids": [record],
            "params": {"adjust": {"price": "+10%"}},
        }
        run = desk.wait(desk.run(body)["id"])
    finally:
        event.remove(Engine, "before_cursor_execute", edit_before_the_update)
    edits[0].join(30)
    assert run["status"] == "completed"
    assert desk.products()[record].price == Decimal("99.00")  # the edit, after the chunk

    undo = desk.wait(desk.post(f"/runs/{run['id']}/undo", {}).json()["id"])
    assert (undo["processed"], undo["failed"]) == (0, 1)  # changed since: left alone
    assert desk.products()[record].price == Decimal("99.00")
