"""Fixtures of the orders suites: fast seeded payments, a shop with products."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from opsline.bootstrap import bootstrap
from opsline.orders.models import Order
from opsline.platform.engine.context import JobContext
from opsline.platform.runtime import Runtime
from opsline.settings import Settings
from tests import _server
from tests.helpers import PASSWORD, Account, add_member, signup


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {
        "payment_latency_min_ms": 0,
        "payment_latency_max_ms": 2,
        "payment_success_rate": 1.0,
        "payment_seed": "tests",
    }


@dataclass
class Shop:
    client: TestClient
    owner: Account
    manager: Account
    member: Account
    viewer: Account

    def product(
        self, sku: str = "SKU-1", stock: int = 10, price: str = "10.00", **extra: Any
    ) -> dict[str, Any]:
        response = self.client.post(
            "/api/v1/products",
            json={"sku": sku, "name": f"Product {sku}", "price": price, "stock": stock, **extra},
            headers=self.manager.headers,
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    def order(
        self, items: list[tuple[str, int]], *, who: Account | None = None, key: str | None = None
    ) -> Any:
        headers = dict((who or self.member).headers)
        headers["Idempotency-Key"] = key or f"k-{id(items)}-{len(items)}-{_next()}"
        return self.client.post(
            "/api/v1/orders",
            json={"items": [{"product_id": p, "quantity": q} for p, q in items]},
            headers=headers,
        )

    def stock(self, product_id: str) -> int:
        response = self.client.get(f"/api/v1/products/{product_id}", headers=self.owner.headers)
        return int(response.json()["stock"])


_counter = iter(range(10**9))


def _next() -> int:
    return next(_counter)


@pytest.fixture
def shop(app_client: TestClient) -> Shop:
    owner = signup(app_client, tenant="Shop")
    return Shop(
        client=app_client,
        owner=owner,
        manager=add_member(app_client, owner, "manager"),
        member=add_member(app_client, owner, "member"),
        viewer=add_member(app_client, owner, "viewer"),
    )


@pytest.fixture
def worker(runtime: Any) -> Any:
    """Real worker threads on the test's database, stopped by the test."""
    from opsline.platform.engine.worker import Worker

    running = Worker(runtime.db, runtime.settings, concurrency=4)
    running.start()
    yield running
    running.stop(grace=5)


def wait_for(predicate: Any, timeout: float = 20.0) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


@dataclass
class Live:
    base: str
    http: httpx.Client
    runtime: Runtime
    owner: dict[str, str]
    member: dict[str, str]

    def product(self, sku: str, stock: int, price: str = "5.00") -> str:
        response = self.http.post(
            "/api/v1/products",
            json={"sku": sku, "name": sku, "price": price, "stock": stock},
            headers=self.owner,
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def stock(self, product_id: str) -> int:
        return int(
            self.http.get(f"/api/v1/products/{product_id}", headers=self.owner).json()["stock"]
        )

    def order(
        self, items: list[tuple[str, int]], key: str, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return self.http.post(
            "/api/v1/orders",
            json={"items": [{"product_id": p, "quantity": q} for p, q in items]},
            headers={**(headers or self.member), "Idempotency-Key": key},
        )

    def join(self, role: str) -> tuple[dict[str, str], str]:
        """A new member of the owner's tenant with ``role``: their headers and user id."""
        headers = _invited(self.http, self.owner, role)
        return headers, str(self.http.get("/api/v1/me", headers=headers).json()["user"]["id"])

    def settled(self, timeout: float = 60) -> list[Order]:
        """Wait until no order is PENDING or PROCESSING; return every order."""
        deadline = time.monotonic() + timeout
        while True:
            with self.runtime.db.read() as session:
                orders = list(session.scalars(select(Order)))
            if all(o.status not in ("PENDING", "PROCESSING") for o in orders):
                return orders
            if time.monotonic() > deadline:
                raise AssertionError(Counter(o.status for o in orders))
            time.sleep(0.05)


def _account(http: httpx.Client) -> tuple[dict[str, str], dict[str, str]]:
    email = f"owner-{uuid.uuid4().hex[:8]}@example.com"
    signed = http.post(
        "/api/v1/auth/signup", json={"email": email, "password": PASSWORD, "tenant_name": "Live"}
    ).json()
    owner = {"Authorization": f"Bearer {signed['tokens']['access_token']}"}
    return owner, _invited(http, owner, "member")


def _invited(http: httpx.Client, owner: dict[str, str], role: str) -> dict[str, str]:
    email = f"{role}-{uuid.uuid4().hex[:8]}@example.com"
    token = http.post(
        "/api/v1/invitations", json={"email": email, "role": role}, headers=owner
    ).json()["token"]
    joined = http.post(
        "/api/v1/auth/accept-invite", json={"token": token, "password": PASSWORD}
    ).json()
    return {"Authorization": f"Bearer {joined['access_token']}"}


@pytest.fixture
def live(settings: Settings) -> Iterator[Live]:
    runtime = bootstrap(settings, role="serve", configure_logs=False)
    try:
        with _server.serve(runtime) as base, _server.client(base) as http:
            owner, member = _account(http)
            yield Live(base, http, runtime, owner, member)
    finally:
        runtime.close()


def job_context(runtime: Runtime, tenant_id: uuid.UUID | None = None, **fields: Any) -> JobContext:
    """The context a job function is called with, to call one directly."""
    given: dict[str, Any] = {
        "job_id": 0,
        "name": "test",
        "queue": "high",
        "tenant_id": tenant_id,
        "attempt": 1,
        "max_attempts": 8,
        "batch_id": None,
        "db": runtime.db,
        "settings": runtime.settings,
        **fields,
    }
    return JobContext(**given)


def order_row(runtime: Runtime, order_id: str) -> Order:
    with runtime.db.read() as session:
        order = session.get(Order, uuid.UUID(order_id))
    assert order is not None
    return order
