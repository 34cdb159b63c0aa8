"""Races the conditional updates must settle the way a client expects."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from opsline.db import WriteLockBusy
from opsline.orders import _stock, service
from opsline.orders.errors import InvalidOrder
from opsline.orders.schemas import OrderIn
from opsline.platform.auth.roles import Role
from opsline.platform.context import Context, Principal
from opsline.platform.runtime import Runtime
from tests.orders.conftest import Live, Shop

pytestmark = pytest.mark.slow


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    # No payment workers: the orders stay PENDING until they are cancelled.
    return {"embedded_workers": 0, "embedded_scheduler": False, "db_pool_size": 20}


def test_concurrent_cancels_of_one_order_all_answer_200_and_restore_once(live: Live) -> None:
    product = live.product("CANCEL-RACE", stock=100)
    orders = [live.order([(product, 2)], key=f"race-{n}").json()["id"] for n in range(12)]
    assert live.stock(product) == 100 - 2 * 12
    barrier = threading.Barrier(8)

    def cancel(order_id: str) -> int:
        barrier.wait(10)
        return live.http.post(f"/api/v1/orders/{order_id}/cancel", headers=live.member).status_code

    statuses: Counter[int] = Counter()
    with ThreadPoolExecutor(8) as pool:
        for order_id in orders:
            statuses.update(pool.map(cancel, [order_id] * 8))
    assert statuses == {200: 12 * 8}
    assert live.stock(product) == 100


def test_a_product_archived_after_the_order_read_it_is_not_sold(
    shop: Shop, runtime: Runtime, backend: str
) -> None:
    product = shop.product(sku="GOING", stock=5)
    owner = Context(
        runtime.db,
        runtime.settings,
        Principal(shop.owner.tenant_id, Role.OWNER, user_id=shop.owner.user_id),
    )
    order = OrderIn.model_validate({"items": [{"product_id": product["id"], "quantity": 1}]})
    placement = service.OrderPlacement(owner, order, idempotency_key=None)
    if backend == "sqlite":
        # The placement reads the product, then finds the write lock taken.
        path = runtime.db.engine.url.database
        assert path is not None
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(WriteLockBusy):
            placement.attempt(wait=False)
        other.execute("ROLLBACK")
        other.close()
    archived = shop.client.delete(f"/api/v1/products/{product['id']}", headers=shop.manager.headers)
    assert archived.status_code == 200
    if backend == "sqlite":
        with pytest.raises(InvalidOrder, match="archived"):
            placement.attempt()
    # And the stock statement itself, whichever way the unit sends it:
    with pytest.raises(InvalidOrder, match="archived"):
        with runtime.db.unit_of_work() as uow:
            _stock.take(uow, shop.owner.tenant_id, {uuid.UUID(product["id"]): 1})
    assert shop.stock(product["id"]) == 5
