"""Bulk actions: update half of N records with undo enabled, then undo; vs a raw UPDATE.

Usage: ``python bench/bulk.py [--quick] [--records N] [--database-url URL]``
(default 1,000,000 records on SQLite; ``--quick`` 100,000). Measured in the same
run: one set-based ``UPDATE`` of the same rows without undo (the floor). Chunk
jobs run in a real ``opsline worker`` subprocess whose peak RSS (VmHWM) is
reported. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

from sqlalchemy import insert, select, text

from opsline.bootstrap import bootstrap
from opsline.bulk import service
from opsline.bulk.schemas import FINAL_STATUSES, BulkRequest, Condition
from opsline.db import utcnow
from opsline.migrate import upgrade
from opsline.orders.models import Product
from opsline.platform.context import Context, system_principal
from opsline.platform.engine.enqueue import enqueue
from opsline.platform.engine.models import jobs_table
from opsline.platform.tenancy.models import Tenant
from opsline.settings import Settings

SECRET = "bench-secret-" + "x" * 32


def _settings(args: argparse.Namespace, var: Path) -> Settings:
    return Settings(
        var_dir=var,
        database_url=args.database_url,
        secret_key=SECRET,
        bulk_max_records=10_000_000,
        bulk_batch_size=args.batch_size,
        log_level="WARNING",
        job_poll_seconds=0.05,
    )


def _seed(runtime: object, n: int) -> uuid.UUID:
    db = runtime.db  # type: ignore[attr-defined]
    tenant = uuid.uuid4()
    with db.unit_of_work() as uow:
        uow.session.execute(
            insert(Tenant).values(id=tenant, name="Bench", slug=f"b-{tenant.hex[:8]}")
        )
    now = utcnow()
    for start in range(0, n, 50_000):
        rows = [
            {
                "id": uuid.uuid4(),
                "tenant_id": tenant,
                "sku": f"B{i:08d}",
                "name": f"Product {i}",
                "price": Decimal("10.00"),
                "currency": "EUR",
                "stock": i % 2,
                "created_at": now,
                "updated_at": now,
            }
            for i in range(start, min(n, start + 50_000))
        ]
        with db.unit_of_work() as uow:
            uow.session.execute(insert(Product), rows)
    return tenant


def _raw_update(runtime: object, tenant: uuid.UUID) -> float:
    db = runtime.db  # type: ignore[attr-defined]
    tid = tenant.hex if db.is_sqlite else str(tenant)
    started = time.perf_counter()
    with db.unit_of_work() as uow:
        uow.session.execute(
            text("UPDATE products SET price = 11.00 WHERE tenant_id = :t AND stock = 0"), {"t": tid}
        )
    return time.perf_counter() - started


def _worker(settings: Settings, concurrency: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "OPSLINE_VAR_DIR": str(settings.var_dir),
        "OPSLINE_SECRET_KEY": SECRET,
        "OPSLINE_LOG_LEVEL": "WARNING",
        "OPSLINE_JOB_POLL_SECONDS": "0.05",
    }
    if settings.database_url:
        env["OPSLINE_DATABASE_URL"] = settings.database_url
    opsline = str(Path(sys.executable).with_name("opsline"))
    cmd = [opsline, "worker", "--queues", "default", "--concurrency", str(concurrency)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _ready(runtime: object, worker: subprocess.Popen[bytes], timeout: float = 120) -> None:
    """Wait until the worker has run one (harmless) job: its start-up is not timed."""
    db = runtime.db  # type: ignore[attr-defined]
    job_id = enqueue(db, "bulk.purge_expired")
    deadline = time.monotonic() + timeout
    while True:
        with db.read() as session:
            state = session.scalar(select(jobs_table.c.state).where(jobs_table.c.id == job_id))
        if state == "succeeded":
            return
        if worker.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the worker did not start (job state {state})")
        time.sleep(0.05)


def _peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _wait(ctx: Context, run_id: uuid.UUID) -> dict[str, object]:
    while True:
        out = service.get_run(ctx, run_id)
        if out.status in FINAL_STATUSES:
            return out.model_dump()
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--records", type=int)
    parser.add_argument("--database-url", default=os.environ.get("OPSLINE_BENCH_DATABASE_URL"))
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    n = args.records or (100_000 if args.quick else 1_000_000)
    var = Path(tempfile.mkdtemp(prefix="bench-bulk-"))
    settings = _settings(args, var)
    if settings.database_url:
        with bootstrap(settings, configure_logs=False).db.engine.begin() as c:
            c.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    upgrade(settings)
    runtime = bootstrap(settings, configure_logs=False)
    tenant = _seed(runtime, n)
    raw_s = _raw_update(runtime, tenant)
    ctx = Context(runtime.db, settings, system_principal(tenant))
    worker = _worker(settings, args.concurrency)
    try:
        _ready(runtime, worker)
        body = BulkRequest(
            resource="products",
            action="update",
            where=[Condition(field="stock", op="eq", value=0)],
            params={"set": {"price": "12.00"}},
        )
        token = service.preview(ctx, body).confirmation_token
        started = time.perf_counter()
        run = service.execute(ctx, body.model_copy(update={"confirmation_token": token}))
        done = _wait(ctx, run.id)
        update_s = time.perf_counter() - started
        started = time.perf_counter()
        undo = service.undo_run(ctx, run.id)
        undone = _wait(ctx, undo.id)
        undo_s = time.perf_counter() - started
        peak = _peak_mb(worker.pid)
    finally:
        worker.terminate()
        worker.wait(30)
        runtime.close()
    half = int(done["total"])  # type: ignore[call-overload]
    figures = {
        "bench": "bulk",
        "backend": "postgresql" if settings.database_url else "sqlite",
        "records": n,
        "updated": half,
        "batch_size": args.batch_size,
        "status": [done["status"], undone["status"]],
        "raw_update_s": round(raw_s, 3),
        "raw_update_per_s": round(half / raw_s),
        "bulk_update_s": round(update_s, 3),
        "bulk_update_per_s": round(half / update_s),
        "undo_s": round(undo_s, 3),
        "undo_per_s": round(half / undo_s),
        "ratio_update_to_raw": round(raw_s / update_s, 3),
        "ratio_undo_to_raw": round(raw_s / undo_s, 3),
        "worker_peak_rss_mb": peak,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
