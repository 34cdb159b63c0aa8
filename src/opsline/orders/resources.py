"""Products as a bulk-action resource (registered with the platform's registry).

A settable field checks what :class:`~opsline.orders.schemas.ProductPatch` checks:
a bulk ``set`` must not store what the products API refuses.
"""

from __future__ import annotations

from decimal import Decimal
from typing import cast

from sqlalchemy import Table

from opsline.orders.models import MAX_MONEY, Product
from opsline.orders.permissions import PRODUCTS_READ, PRODUCTS_WRITE
from opsline.platform.resources import Field, Resource, register_resource

PRODUCTS = register_resource(
    Resource(
        name="products",
        label="Products",
        table=cast(Table, Product.__table__),
        fields=(
            Field("id", "uuid"),
            Field("sku", "str", max_length=64),
            Field("name", "str", settable=True, min_length=1, max_length=200),
            Field(
                "price",
                "decimal",
                settable=True,
                adjustable=True,
                minimum=Decimal(0),
                maximum=MAX_MONEY,
                scale=2,
            ),
            Field("currency", "str", settable=True, max_length=3, pattern=r"[A-Z]{3}"),
            Field("stock", "int", minimum=Decimal(0)),
            Field("archived_at", "datetime", nullable=True),
            Field("deleted_at", "datetime", nullable=True),
            Field("created_at", "datetime"),
            Field("updated_at", "datetime"),
        ),
        permissions={"read": PRODUCTS_READ.name, "write": PRODUCTS_WRITE.name},
        archived_column="archived_at",
        deleted_column="deleted_at",
        updated_column="updated_at",
    )
)
