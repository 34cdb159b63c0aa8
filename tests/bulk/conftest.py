"""Fixtures of the bulk suites: a tenant with products, real worker threads, helpers."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert, select, text

from opsline.db import utcnow
from opsline.orders.models import Product
from opsline.platform.engine.models import EventRecord
from opsline.platform.runtime import Runtime
from tests.bulk._widgets import widget_table
from tests.helpers import Account, signup

__all__ = ["widget_table"]

FINAL = ("completed", "completed_with_errors", "failed", "cancelled")


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"job_poll_seconds": 0.05, "bulk_confirm_threshold": 100_000}


@dataclass
class Desk:
    client: TestClient
    runtime: Runtime
    owner: Account

    def seed(self, n: int, *, tenant: uuid.UUID | None = None, name: str = "Item") -> list[str]:
        """Insert ``n`` products directly (fast); returns their ids."""
        now = utcnow()
        rows = [
            {
                "id": uuid.uuid4(),
                "tenant_id": tenant or self.owner.tenant_id,
                "sku": f"S-{i:06d}-{uuid.uuid4().hex[:6]}",
                "name": f"{name} {i}",
                "price": Decimal(10 + i % 50) + Decimal("0.25"),
                "currency": "EUR",
                "stock": i % 7,
                "created_at": now,
                "updated_at": now,
            }
            for i in range(n)
        ]
        with self.runtime.db.unit_of_work() as uow:
            uow.session.execute(insert(Product), rows)
        return [str(r["id"]) for r in rows]

    def post(self, path: str, body: Any, who: Account | None = None) -> Any:
        return self.client.post(
            f"/api/v1/bulk{path}", json=body, headers=(who or self.owner).headers
        )

    def get(self, path: str, who: Account | None = None) -> Any:
        return self.client.get(f"/api/v1/bulk{path}", headers=(who or self.owner).headers)

    def run(self, body: dict[str, Any], who: Account | None = None) -> dict[str, Any]:
        """Preview (for the token), then execute; returns the 202 body."""
        preview = self.post("/preview", body, who)
        assert preview.status_code == 200, preview.text
        started = self.post(
            "/runs", {**body, "confirmation_token": preview.json()["confirmation_token"]}, who
        )
        assert started.status_code == 202, started.text
        result: dict[str, Any] = started.json()
        return result

    def wait(self, run_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            body: dict[str, Any] = self.get(f"/runs/{run_id}").json()
            if body["status"] in FINAL:
                return body
            assert time.monotonic() < deadline, body
            time.sleep(0.05)

    def rows_hash(self, tenant: uuid.UUID | None = None) -> str:
        """A hash of every stored product row of the tenant, in stored form."""
        with self.runtime.db.read() as session:
            rows = session.execute(
                select(text("*"))
                .select_from(Product.__table__)
                .where(Product.tenant_id == (tenant or self.owner.tenant_id))
                .order_by(Product.id)
            ).all()
        return hashlib.sha256(repr([tuple(r) for r in rows]).encode()).hexdigest()

    def products(self, ids: list[str] | None = None) -> dict[str, Product]:
        with self.runtime.db.read() as session:
            stmt = select(Product).where(Product.tenant_id == self.owner.tenant_id)
            if ids is not None:
                stmt = stmt.where(Product.id.in_([uuid.UUID(i) for i in ids]))
            return {str(p.id): p for p in session.scalars(stmt)}

    def events(self, type_: str, run_id: str) -> list[dict[str, Any]]:
        """The payloads of the ``type_`` events published about run ``run_id``."""
        with self.runtime.db.read() as session:
            payloads = session.scalars(
                select(EventRecord.payload).where(EventRecord.type == type_)
            ).all()
        return [p for p in payloads if p["run_id"] == run_id]


@pytest.fixture
def desk(app_client: TestClient, runtime: Runtime) -> Desk:
    return Desk(app_client, runtime, signup(app_client, tenant="Desk"))


@pytest.fixture
def worker(runtime: Runtime) -> Iterator[Any]:
    from opsline.platform.engine.worker import Worker

    running = Worker(runtime.db, runtime.settings, concurrency=4)
    running.start()
    yield running
    running.stop(grace=5)
