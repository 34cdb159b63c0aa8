"""The demo tenant that ``make run`` loads: an owner whose credentials are documented.

Idempotent: running it again changes nothing and reports that the tenant exists.
Capabilities add their demo data by registering a seeder.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select

from opsline.db import UnitOfWork
from opsline.platform.auth.models import User
from opsline.platform.auth.service import create_user
from opsline.platform.auth.tokens import hash_password
from opsline.platform.runtime import Runtime
from opsline.platform.tenancy.models import Membership, Tenant
from opsline.platform.tenancy.service import create_tenant

DEMO_TENANT = "Demo Shop"

Seeder = Callable[[UnitOfWork, Tenant, User], None]
_SEEDERS: list[Seeder] = []


def register_demo_seeder(seeder: Seeder) -> Seeder:
    _SEEDERS.append(seeder)
    return seeder


def load_demo(runtime: Runtime) -> tuple[Tenant, User, bool]:
    """Create the demo tenant and owner once; return them and whether they were created."""
    settings = runtime.settings
    email = settings.demo_email.lower()
    with runtime.db.unit_of_work() as uow:
        found = uow.session.execute(
            select(Tenant, User)
            .join(Membership, Membership.tenant_id == Tenant.id)
            .join(User, User.id == Membership.user_id)
            .where(User.email == email, Tenant.name == DEMO_TENANT)
        ).first()
        if found is not None:
            tenant, user = found
            return tenant, user, False
        # Hashed in the transaction: once, from the command line, with nothing waiting.
        password_hash = hash_password(settings.demo_password.get_secret_value())
        user = create_user(uow, email=email, password_hash=password_hash)
        tenant = create_tenant(uow, name=DEMO_TENANT, owner=user)
        for seeder in _SEEDERS:
            seeder(uow, tenant, user)
    return tenant, user, True
