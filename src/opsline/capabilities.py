"""Every capability, imported once so that its permissions, jobs, listeners,
periodic jobs, events and demo data register with the platform."""

from opsline.orders import demo as orders_demo
from opsline.orders import jobs as orders_jobs
from opsline.orders import permissions as orders_permissions
from opsline.platform.idempotency import jobs as idempotency_jobs

__all__ = ["idempotency_jobs", "orders_demo", "orders_jobs", "orders_permissions"]
