"""A generic resource of the tests: ``bulk_test_widgets``, with a custom action.

The table lives in its own metadata (it is no part of the schema): the
fixture creates it in the test's database, registers the resource, and
drops both afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import (
    Boolean,
    Column,
    ColumnElement,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Uuid,
    insert,
    literal,
    select,
)

from opsline.db import UtcDateTime, utcnow
from opsline.orders.permissions import PRODUCTS_READ, PRODUCTS_WRITE
from opsline.platform.resources import (
    CustomAction,
    Field,
    Resource,
    register_resource,
    unregister_resource,
)
from opsline.platform.runtime import Runtime

metadata = MetaData()
widgets = Table(
    "bulk_test_widgets",
    metadata,
    Column("id", Uuid(), primary_key=True),
    Column("tenant_id", Uuid(), nullable=False, index=True),
    Column("name", String(100), nullable=False),
    Column("code", String(20)),
    Column("qty", Integer, nullable=False),
    Column("weight", Numeric(10, 3), nullable=False),
    Column("active", Boolean, nullable=False),
    Column("kind", String(10), nullable=False),
    Column("archived_at", UtcDateTime()),
    Column("deleted_at", UtcDateTime()),
    Column("updated_at", UtcDateTime(), nullable=False),
)


def _restock(table: Table, params: Mapping[str, Any]) -> Mapping[str, ColumnElement[Any]]:
    amount = params.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int) or not 1 <= amount <= 1000:
        raise ValueError("restock needs params {amount: 1..1000}")
    return {"qty": table.c.qty + literal(amount), "active": literal(True)}


RESTOCK = CustomAction("restock", PRODUCTS_WRITE.name, _restock, "Add stock and activate")
WIDGETS = Resource(
    name="widgets",
    label="Test widgets",
    table=widgets,
    fields=(
        Field("id", "uuid"),
        Field("name", "str", settable=True, max_length=100),
        Field("code", "str", settable=True, nullable=True, max_length=20),
        Field("qty", "int", settable=True, adjustable=True, minimum=Decimal(0)),
        Field("weight", "decimal", adjustable=True, minimum=Decimal(0), scale=3),
        Field("active", "bool", settable=True),
        Field("kind", "enum", settable=True, choices=("a", "b", "c")),
        Field("archived_at", "datetime", nullable=True),
        Field("deleted_at", "datetime", nullable=True),
    ),
    permissions={"read": PRODUCTS_READ.name, "write": PRODUCTS_WRITE.name},
    archived_column="archived_at",
    deleted_column="deleted_at",
    updated_column="updated_at",
    custom_actions=(RESTOCK,),
)


@dataclass
class Widgets:
    runtime: Runtime

    def seed(self, tenant: uuid.UUID, n: int = 10) -> list[str]:
        """Row ``i``: qty i, weight i/2, code None when i is even, kind 'abc'[i % 3]."""
        rows = [
            {
                "id": uuid.uuid4(),
                "tenant_id": tenant,
                "name": "50%_off" if i == 9 else f"Widget {i}",
                "code": None if i % 2 == 0 else f"C-{i}",
                "qty": i,
                "weight": Decimal(i) / 2,
                "active": i % 2 == 0,
                "kind": "abc"[i % 3],
                "updated_at": utcnow(),
            }
            for i in range(n)
        ]
        with self.runtime.db.unit_of_work() as uow:
            uow.session.execute(insert(widgets), rows)
        return [str(r["id"]) for r in rows]

    def rows(self, tenant: uuid.UUID) -> list[tuple[Any, ...]]:
        with self.runtime.db.read() as session:
            stmt = select(widgets).where(widgets.c.tenant_id == tenant).order_by(widgets.c.id)
            return [tuple(r) for r in session.execute(stmt)]


@contextmanager
def registered(runtime: Runtime, tables: MetaData, resource: Resource) -> Iterator[None]:
    """A test resource's tables made and the resource registered, for the block."""
    tables.create_all(runtime.db.engine)
    register_resource(resource)
    try:
        yield
    finally:
        unregister_resource(resource.name)
        tables.drop_all(runtime.db.engine)


@pytest.fixture
def widget_table(runtime: Runtime) -> Iterator[Widgets]:
    with registered(runtime, metadata, WIDGETS):
        yield Widgets(runtime)
