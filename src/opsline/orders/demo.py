"""The demo tenant's small catalogue, one product with a single unit left."""

from __future__ import annotations

from decimal import Decimal

from opsline.db import UnitOfWork
from opsline.orders.models import Product
from opsline.platform.auth.models import User
from opsline.platform.tenancy.demo import register_demo_seeder
from opsline.platform.tenancy.models import Tenant

CATALOGUE = [
    ("MUG-001", "Enamel mug", "12.50", 120),
    ("TEE-001", "Organic T-shirt", "24.00", 40),
    ("BAG-001", "Canvas tote bag", "18.90", 75),
    ("LAMP-001", "Desk lamp, last one", "89.00", 1),
    ("PEN-010", "Fountain pen", "35.00", 10),
]


@register_demo_seeder
def seed_catalogue(uow: UnitOfWork, tenant: Tenant, _owner: User) -> None:
    for sku, name, price, stock in CATALOGUE:
        uow.session.add(
            Product(
                tenant_id=tenant.id,
                sku=sku,
                name=name,
                price=Decimal(price),
                currency="EUR",
                stock=stock,
            )
        )
