"""Jobs used by the engine tests (also imported by worker subprocesses)."""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict

from sqlalchemy import text

from opsline.platform.engine.context import JobContext
from opsline.platform.engine.errors import Retry
from opsline.platform.engine.registry import RetryPolicy, job

CALLS: dict[str, list[object]] = defaultdict(list)
CALLS_LOCK = threading.Lock()
GATE = threading.Event()


def record(kind: str, value: object) -> None:
    with CALLS_LOCK:
        CALLS[kind].append(value)


@job("tests.noop")
def noop(ctx: JobContext) -> None:
    return None


@job("tests.short_unit", max_attempts=1)
def short_unit(ctx: JobContext, *, fail: bool = False) -> None:
    """Records the thread its short unit ran on (the server's loop, embedded);
    with ``fail`` the unit enqueues a job, then raises."""

    def work(wait: bool) -> str:
        with ctx.db.unit_of_work(wait=wait) as uow:
            uow.session.execute(text("SELECT 1"))
            if fail:
                noop.enqueue(uow)
                raise ValueError("the short unit failed")
        return threading.current_thread().name

    record("short_unit", ctx.short_unit(work))


@job("tests.echo", queue="default")
def echo(ctx: JobContext, *, value: int, note: str = "") -> None:
    record("echo", (value, ctx.tenant_id, ctx.attempt))


@job("tests.record_queue", queue="low")
def record_low(ctx: JobContext, *, value: int) -> None:
    record("order", ("low", value))


@job("tests.record_high", queue="high")
def record_high(ctx: JobContext, *, value: int) -> None:
    record("order", ("high", value))


@job("tests.flaky", max_attempts=3, retry=RetryPolicy(base=0.01, cap=0.02))
def flaky(ctx: JobContext, *, fail_times: int, key: str) -> None:
    record(key, ctx.attempt)
    if ctx.attempt <= fail_times:
        raise ValueError(f"attempt {ctx.attempt} fails")


@job("tests.retry_later", max_attempts=2)
def retry_later(ctx: JobContext) -> None:
    record("retry_later", ctx.attempt)
    if ctx.attempt == 1:
        raise Retry(delay=0.0)


@job("tests.unique", unique=["order_id"])
def unique_job(ctx: JobContext, *, order_id: uuid.UUID) -> None:
    record("unique", order_id)


@job("tests.wait_cancel", max_attempts=1)
def wait_cancel(ctx: JobContext) -> None:
    record("wait_cancel_started", ctx.job_id)
    while True:
        ctx.check_cancelled()
        time.sleep(0.01)


@job("tests.sleep", max_attempts=3)
def sleep(ctx: JobContext, *, seconds: float, key: str) -> None:
    record(key, ctx.attempt)
    time.sleep(seconds)


@job("tests.slow", timeout=0.3, max_attempts=2, retry=RetryPolicy(base=0.01, cap=0.01))
def slow(ctx: JobContext, *, key: str) -> None:
    record(key, ctx.attempt)
    if ctx.attempt == 1:
        for _ in range(1000):
            time.sleep(0.01)


@job("tests.keyed", concurrency_key=["room"], concurrency_limit=1)
def keyed(ctx: JobContext, *, room: str, n: int) -> None:
    record(f"keyed_{room}", ("start", n))
    time.sleep(0.02)
    record(f"keyed_{room}", ("end", n))


@job("tests.callback")
def callback(ctx: JobContext, *, batch_id: uuid.UUID, kind: str = "") -> None:
    record("callback", (kind, batch_id))


@job("tests.insert_row", max_attempts=5)
def insert_row(ctx: JobContext, *, key: int) -> None:
    """Idempotent: inserting the same key twice (a re-run after a crash) is a no-op."""
    with ctx.unit_of_work() as uow:
        uow.session.execute(
            text("INSERT INTO crash_rows (key, job_id) VALUES (:k, :j) ON CONFLICT DO NOTHING"),
            {"k": key, "j": ctx.job_id},
        )


@job("tests.tick", queue="low")
def tick(ctx: JobContext) -> None:
    record("tick", ctx.job_id)


@job("tests.rated", rate_limit="2/minute", rate_key=["account"])
def rated(ctx: JobContext, *, account: str) -> None:
    record(f"rated_{account}", ctx.attempt)
