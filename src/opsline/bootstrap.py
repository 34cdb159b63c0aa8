"""The composition root: settings in, a wired :class:`Runtime` out.

The server, the CLI, the workers and the tests all build their runtime here,
so every process is assembled the same way.
"""

from __future__ import annotations

import opsline.capabilities
import opsline.models  # noqa: F401  - every table is known
from opsline.db import Database
from opsline.platform.auth.tokens import TokenSigner, configure_password_hashing
from opsline.platform.engine.embedded import add_embedded_engine, attach_engine
from opsline.platform.observability.logging import configure_logging
from opsline.platform.ratelimit import RateLimiter
from opsline.platform.runtime import Runtime
from opsline.settings import Settings, load_settings


def bootstrap(
    settings: Settings | None = None, *, role: str = "cli", configure_logs: bool = True
) -> Runtime:
    """Wire a runtime. ``role`` is ``serve`` for the server (which also runs the
    embedded workers and scheduler), ``worker``, ``scheduler`` or ``cli``."""
    settings = settings or load_settings()
    if configure_logs:
        configure_logging(settings.log_format, settings.log_level)
    if settings.is_sqlite:
        settings.var_dir.mkdir(parents=True, exist_ok=True)
    configure_password_hashing(
        time_cost=settings.argon2_time_cost, memory_kib=settings.argon2_memory_kib
    )
    runtime = Runtime(
        settings=settings,
        db=Database(settings),
        tokens=TokenSigner(settings),
        rate_limiter=RateLimiter(settings.redis_url),
    )
    attach_engine(runtime)
    if role == "serve":
        add_embedded_engine(runtime)
    return runtime
