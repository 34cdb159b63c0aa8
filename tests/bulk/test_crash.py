"""kill -9 a worker mid-run: the run completes, every record changed exactly once, undo exact.

A real ``opsline worker`` subprocess applies a bulk update (``adjust price +1``)
in small chunks; its whole process group is killed with SIGKILL while it holds
chunk jobs. A second worker rescues the dead worker's chunks once their lease
(2 s here) expires and finishes the run. Every price must be exactly its
original plus one (a chunk applied twice would add two), the run's counters
must match the selection, and undo must restore every row byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select, text

from opsline.bootstrap import bootstrap
from opsline.bulk import service
from opsline.bulk.schemas import FINAL_STATUSES, BulkRequest, Condition, RunOut
from opsline.db import Database, utcnow
from opsline.orders.models import Product
from opsline.platform.context import Context, system_principal
from opsline.platform.engine.models import job_errors_table, jobs_table
from opsline.platform.runtime import Runtime
from opsline.platform.tenancy.models import Tenant
from opsline.settings import Settings
from tests.helpers import stop_group

pytestmark = pytest.mark.slow

RECORDS = 3000
CHUNK = 20
OPSLINE = str(Path(sys.executable).with_name("opsline"))
J = jobs_table.c


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"job_lease_seconds": 2.0, "job_poll_seconds": 0.05}


@pytest.fixture
def crash_runtime(settings: Settings) -> Iterator[Runtime]:
    runtime = bootstrap(settings, configure_logs=False)
    yield runtime
    runtime.close()


def _env(settings: Settings) -> dict[str, str]:
    assert settings.secret_key is not None
    env = {
        **os.environ,
        "OPSLINE_VAR_DIR": str(settings.var_dir),
        "OPSLINE_SECRET_KEY": settings.secret_key.get_secret_value(),
        "OPSLINE_JOB_LEASE_SECONDS": str(settings.job_lease_seconds),
        "OPSLINE_JOB_POLL_SECONDS": str(settings.job_poll_seconds),
        "OPSLINE_LOG_FORMAT": "json",
    }
    if settings.database_url:
        env["OPSLINE_DATABASE_URL"] = settings.database_url
    return env


def _worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    """A worker in its own process group (so ``killpg`` reaches all of it)."""
    with log.open("ab") as output:
        return subprocess.Popen(
            [OPSLINE, "worker", "--queues", "default", "--concurrency", "2"],
            env=_env(settings),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _seed(db: Database) -> uuid.UUID:
    tenant = uuid.uuid4()
    now = utcnow()
    rows = [
        {
            "id": uuid.uuid4(),
            "tenant_id": tenant,
            "sku": f"K{i:06d}",
            "name": f"Crash {i}",
            "price": Decimal(10 + i % 50) + Decimal("0.25"),
            "currency": "EUR",
            "stock": i % 7,
            "created_at": now,
            "updated_at": now,
        }
        for i in range(RECORDS)
    ]
    with db.unit_of_work() as uow:
        uow.session.execute(insert(Tenant).values(id=tenant, name="Crash", slug=f"c-{tenant.hex}"))
        uow.session.execute(insert(Product), rows)
    return tenant


def _prices(db: Database, tenant: uuid.UUID) -> dict[uuid.UUID, Decimal]:
    with db.read() as session:
        rows = session.execute(
            select(Product.id, Product.price).where(Product.tenant_id == tenant)
        ).all()
    return {row.id: row.price for row in rows}


def _rows_hash(db: Database, tenant: uuid.UUID) -> str:
    with db.read() as session:
        rows = session.execute(
            select(text("*"))
            .select_from(Product.__table__)
            .where(Product.tenant_id == tenant)
            .order_by(Product.id)
        ).all()
    return hashlib.sha256(repr([tuple(r) for r in rows]).encode()).hexdigest()


def _held_by(db: Database, pid: int) -> int:
    with db.read() as session:
        return int(
            session.execute(
                select(func.count()).where(J.state == "running", J.lease_owner.like(f"%:{pid}:%"))
            ).scalar_one()
        )


def _finished(ctx: Context, run_id: uuid.UUID, timeout: float) -> RunOut:
    deadline = time.monotonic() + timeout
    while (run := service.get_run(ctx, run_id)).status not in FINAL_STATUSES:
        assert time.monotonic() < deadline, run
        time.sleep(0.05)
    return run


def _rescued(db: Database) -> tuple[set[int], set[int]]:
    """(ids of chunk jobs run more than once, ids of jobs with a WorkerLost error)."""
    with db.read() as session:
        again = session.scalars(
            select(J.id).where(J.name == "bulk.apply_chunk", J.attempt >= 2)
        ).all()
        lost = session.scalars(
            select(job_errors_table.c.job_id).where(job_errors_table.c.error_type == "WorkerLost")
        ).all()
    return set(again), set(lost)


def test_kill_9_mid_run_applies_every_record_once_and_undo_stays_exact(
    settings: Settings, crash_runtime: Runtime, tmp_path: Path
) -> None:
    db = crash_runtime.db
    tenant = _seed(db)
    before_prices, before_hash = _prices(db, tenant), _rows_hash(db, tenant)
    ctx = Context(db, settings, system_principal(tenant))
    body = BulkRequest(
        resource="products",
        action="update",
        where=[Condition(field="currency", op="eq", value="EUR")],
        params={"adjust": {"price": "+1"}},
        batch_size=CHUNK,
    )
    token = service.preview(ctx, body).confirmation_token
    first = second = None
    try:
        first = _worker(settings, tmp_path / "first.log")
        run = service.execute(ctx, body.model_copy(update={"confirmation_token": token}))
        assert run.total == RECORDS
        _wait(lambda: service.get_run(ctx, run.id).processed >= RECORDS // 5, 120)
        _wait(lambda: _held_by(db, first.pid) > 0, 60)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        assert service.get_run(ctx, run.id).processed < RECORDS, "killed too late"

        second = _worker(settings, tmp_path / "second.log")
        done = _finished(ctx, run.id, 180)
        assert (done.status, done.total, done.processed, done.failed) == (
            "completed",
            RECORDS,
            RECORDS,
            0,
        )
        after = _prices(db, tenant)
        assert after == {rid: price + 1 for rid, price in before_prices.items()}
        again, lost = _rescued(db)
        assert again, "the killed worker held chunks; they must show a second attempt"
        assert again <= lost

        undo = service.undo_run(ctx, run.id)
        undone = _finished(ctx, undo.id, 180)
        assert (undone.status, undone.processed, undone.failed) == ("completed", RECORDS, 0)
        assert _rows_hash(db, tenant) == before_hash
    finally:
        stop_group(first)
        stop_group(second)
