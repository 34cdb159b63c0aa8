"""The hourly purge of idempotency keys: expired keys go, live ones stay, in every tenant.

Keys are claimed through ``run_idempotent`` as a use case claims them; the job
is enqueued by the real scheduler at its slot and run by a real worker.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import event, select, update

from opsline.db import utcnow
from opsline.platform.context import Context, system_principal
from opsline.platform.engine.scheduler import Scheduler, periodic_jobs
from opsline.platform.idempotency.models import IdempotencyKey
from opsline.platform.idempotency.service import purge_expired, run_idempotent
from opsline.platform.runtime import Runtime
from tests.helpers import signup
from tests.platform.engine.helpers import job_row, running_worker, wait_until

PURGE = "idempotency.purge_expired_keys"


def _claim(ctx: Context, key: str) -> bool:
    """Run a use case under ``key``; True if it ran (False: the stored answer was replayed)."""
    outcome = run_idempotent(
        ctx, key=key, request_fingerprint="fp", status=201, action=lambda _uow: {"key": key}
    )
    assert outcome.body == {"key": key}
    return not outcome.replayed


def _keys(runtime: Runtime) -> set[tuple[uuid.UUID, str]]:
    with runtime.db.read() as session:
        rows = session.execute(select(IdempotencyKey.tenant_id, IdempotencyKey.key)).all()
    return {(tenant_id, key) for tenant_id, key in rows}


def _run_the_scheduled_purge(runtime: Runtime) -> None:
    [purge] = [p for p in periodic_jobs() if p.job.name == PURGE]
    scheduler = Scheduler(runtime.db, runtime.settings, jobs=[purge])
    try:
        assert scheduler.tick(utcnow() - timedelta(hours=2)) == []  # first sight
        [job_id] = scheduler.tick()  # its hourly slot has come since
    finally:
        scheduler.release()
    with running_worker(runtime.db, runtime.settings, queues=[purge.job.queue], concurrency=1):
        wait_until(lambda: job_row(runtime.db, job_id).state == "succeeded", timeout=20)


def test_the_purge_removes_expired_keys_and_keeps_live_ones(
    runtime: Runtime, app_client: TestClient
) -> None:
    a = Context(runtime.db, runtime.settings, system_principal(signup(app_client).tenant_id))
    b = Context(runtime.db, runtime.settings, system_principal(signup(app_client).tenant_id))
    for ctx, key in ((a, "old"), (a, "live"), (b, "old")):
        assert _claim(ctx, key)
    # Given a's "old" key past its 24 hours (b's key of the same name is not).
    with runtime.db.unit_of_work() as uow:
        uow.session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.tenant_id == a.tenant_id, IdempotencyKey.key == "old")
            .values(expires_at=utcnow() - timedelta(minutes=1))
        )

    _run_the_scheduled_purge(runtime)

    assert _keys(runtime) == {(a.tenant_id, "live"), (b.tenant_id, "old")}
    # The kept keys still replay their first response.
    assert not _claim(a, "live") and not _claim(b, "old")


def test_the_purge_deletes_in_chunks_until_none_is_left(
    runtime: Runtime, app_client: TestClient
) -> None:
    ctx = Context(runtime.db, runtime.settings, system_principal(signup(app_client).tenant_id))
    for n in range(7):
        assert _claim(ctx, f"old-{n}")
    assert _claim(ctx, "live")
    with runtime.db.unit_of_work() as uow:
        uow.session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.key.startswith("old-"))
            .values(expires_at=utcnow() - timedelta(minutes=1))
        )
    units: list[object] = []

    def committed(conn: object) -> None:
        units.append(conn)

    event.listen(runtime.db.engine, "commit", committed)
    try:
        assert purge_expired(runtime.db, chunk=3) == 7
    finally:
        event.remove(runtime.db.engine, "commit", committed)
    assert len(units) == 3  # 3 + 3 + 1: the last chunk short of 3 ends it
    assert _keys(runtime) == {(ctx.tenant_id, "live")}
