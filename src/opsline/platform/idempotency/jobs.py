"""The scheduled purge of idempotency keys past their 24 hours."""

from __future__ import annotations

from opsline.platform.engine.context import JobContext
from opsline.platform.engine.registry import job
from opsline.platform.engine.scheduler import periodic
from opsline.platform.idempotency.service import purge_expired


@periodic("17 * * * *")
@job("idempotency.purge_expired_keys", queue="low", max_attempts=3)
def purge_expired_keys(ctx: JobContext) -> int:
    return purge_expired(ctx.db)
