"""Every table of Opsline, imported so that one metadata knows them all.

Alembic's env and the schema-equals-models test import this module. A new
package with tables adds its ``models`` import here.
"""

from opsline.bulk import models as bulk_models
from opsline.db import Base
from opsline.orders import models as orders_models
from opsline.platform.auth import models as auth_models
from opsline.platform.engine import models as engine_models
from opsline.platform.idempotency import models as idempotency_models
from opsline.platform.tenancy import models as tenancy_models

metadata = Base.metadata

__all__ = [
    "auth_models",
    "bulk_models",
    "engine_models",
    "idempotency_models",
    "metadata",
    "orders_models",
    "tenancy_models",
]
