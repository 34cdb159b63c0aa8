"""Every router mounted under /api/v1, platform first, then capabilities."""

from __future__ import annotations

from fastapi import APIRouter

from opsline.bulk.api import router as bulk_router
from opsline.orders.api import router as orders_router
from opsline.orders.live_api import router as orders_live_router
from opsline.platform.auth.api import router as auth_router
from opsline.platform.engine.api import router as engine_router
from opsline.platform.tenancy.api import router as tenancy_router


def api_routers() -> list[APIRouter]:
    return [
        auth_router,
        tenancy_router,
        # engine
        engine_router,
        orders_router,
        orders_live_router,
        bulk_router,
    ]
