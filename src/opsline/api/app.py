"""``create_app``: the FastAPI application for one runtime."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import ORJSONResponse

from opsline import __version__
from opsline.api.body_limit import BodyLimitMiddleware
from opsline.api.errors import install_error_handlers
from opsline.api.middleware import RequestContextMiddleware, install_log_filters
from opsline.api.ops import router as ops_router
from opsline.api.routers import api_routers
from opsline.bootstrap import bootstrap
from opsline.platform.http.deps import document_security
from opsline.platform.http.problems import document_problems
from opsline.platform.loop import close_running_loop
from opsline.platform.runtime import Runtime
from opsline.settings import Settings, load_settings


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> FastAPI:
    runtime = runtime or bootstrap(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime.start_background()
        try:
            yield
        finally:
            # Off the loop: embedded workers finish their jobs' units on it meanwhile.
            await asyncio.to_thread(runtime.stop_background)
            await runtime.db.dispose_on_loop()
            await close_running_loop()  # the loop's Redis clients

    app = FastAPI(
        title="Opsline",
        version=__version__,
        description="Multi-tenant operations backend on one durable job-and-event engine.",
        default_response_class=ORJSONResponse,
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    install_log_filters()
    # The last added runs first: the request id is bound before a body is refused.
    app.add_middleware(BodyLimitMiddleware, max_bytes=runtime.settings.max_request_bytes)
    app.add_middleware(RequestContextMiddleware)
    app.include_router(ops_router)
    for router in api_routers():
        app.include_router(router, prefix="/api/v1")
    _with_schemes(app)
    return app


def served_app() -> FastAPI:
    """The app of one of several ``opsline serve`` processes (uvicorn's factory):
    each builds its own runtime from the environment, as a lone server does."""
    return create_app(runtime=bootstrap(load_settings(), role="serve"))


def _with_schemes(app: FastAPI) -> None:
    """The OpenAPI document names how each endpoint authenticates (see ``document_security``)
    and the problem document that every error answer is."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            document_security(schema, app.routes)
            document_problems(schema)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
