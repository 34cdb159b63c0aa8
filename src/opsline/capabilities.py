"""Every capability, imported once so that its permissions, jobs, listeners,
periodic jobs, events and demo data register with the platform."""

from opsline.bulk import jobs as bulk_jobs
from opsline.bulk import permissions as bulk_permissions
from opsline.orders import demo as orders_demo
from opsline.orders import jobs as orders_jobs
from opsline.orders import permissions as orders_permissions
from opsline.orders import resources as orders_resources
from opsline.orders import sweep as orders_sweep
from opsline.platform.engine import jobs as engine_jobs
from opsline.platform.idempotency import jobs as idempotency_jobs
from opsline.platform.resources import members as members_resource

__all__ = [
    "bulk_jobs",
    "bulk_permissions",
    "engine_jobs",
    "idempotency_jobs",
    "members_resource",
    "orders_demo",
    "orders_jobs",
    "orders_permissions",
    "orders_resources",
    "orders_sweep",
]
