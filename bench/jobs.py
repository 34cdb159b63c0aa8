"""Opsline's engine against the fastest Python job systems (issue 3's benchmark).

20,000 no-op jobs by the method of shared/PEERS.md (``bench/_harness.py``): enqueue
one at a time with workers stopped, then drain with 2 worker processes, then idle
pickup latency. Opsline runs on SQLite (``synchronous=NORMAL`` and ``FULL``) and on
PostgreSQL, with ``opsline worker --processes 2 --concurrency 8``; in the same run
Dramatiq + RabbitMQ, PgQueuer + PostgreSQL and Celery + RabbitMQ (``bench.peers``,
installed by ``uv sync --all-groups``). Also the enqueue latency of one job from a
request (a unit of work with one job row), p50/p95 on SQLite.

Usage: ``python -m bench.jobs [--quick] [--only opsline_sqlite,dramatiq_rabbitmq,...]``.
The last line of stdout is one JSON object.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench._harness import Recorder, Workers, main, measure_queue, percentile
from bench._http import database

OPSLINE = str(Path(sys.executable).with_name("opsline"))


def _opsline(backend: str, synchronous: str = "NORMAL") -> Any:
    def run(n_jobs: int, latency_samples: int) -> dict[str, Any]:
        from bench import _opsline_jobs
        from sqlalchemy import delete

        from opsline import migrate
        from opsline.db import Database
        from opsline.platform.engine.models import jobs_table
        from opsline.settings import Settings

        with database(backend) as env:
            env = {
                **env,
                "OPSLINE_SQLITE_SYNCHRONOUS": synchronous,
                "OPSLINE_LOG_LEVEL": "WARNING",
                "OPSLINE_SECRET_KEY": "bench-" + "x" * 40,
            }
            settings = Settings(
                var_dir=Path(env["OPSLINE_VAR_DIR"]),
                database_url=env.get("OPSLINE_DATABASE_URL"),
                sqlite_synchronous=synchronous,  # type: ignore[arg-type]
            )
            migrate.upgrade(settings)
            db = Database(settings)

            def reset() -> None:
                with db.unit_of_work() as uow:
                    uow.session.execute(delete(jobs_table))

            def enqueue(seq: int) -> None:
                _opsline_jobs.noop.enqueue(db, seq=seq)

            def workers(recorder: Recorder) -> Workers:
                command = [
                    OPSLINE,
                    "worker",
                    "--queues",
                    "default",
                    "--concurrency",
                    "8",
                    "--processes",
                    "2",
                    "--import",
                    "bench._opsline_jobs",
                ]
                return Workers([command], {**os.environ, **recorder.env, **env}, recorder.dir)

            try:
                result = measure_queue(
                    n_jobs=n_jobs,
                    latency_samples=latency_samples,
                    reset=reset,
                    enqueue=enqueue,
                    workers=workers,
                    workers_desc="opsline worker --processes 2 --concurrency 8",
                    extra={"request_enqueue": _request_enqueue(db)}
                    if backend == "sqlite"
                    else None,
                )
            finally:
                db.dispose()
            return result

    return run


def _request_enqueue(db: Any, samples: int = 500) -> dict[str, float]:
    """Enqueue inside a unit of work, as a request does: the transaction, the job row, commit."""
    from bench import _opsline_jobs

    timings = []
    for seq in range(samples):
        started = time.perf_counter()
        with db.unit_of_work() as uow:
            _opsline_jobs.noop.enqueue(uow, seq=-100_000 - seq)
        timings.append((time.perf_counter() - started) * 1000)
    return {
        "p50_ms": round(percentile(timings, 50), 3),
        "p95_ms": round(percentile(timings, 95), 3),
    }


def systems() -> dict[str, Any]:
    found: dict[str, Any] = {
        "opsline_sqlite": _opsline("sqlite", "NORMAL"),
        "opsline_sqlite_full": _opsline("sqlite", "FULL"),
        "opsline_postgresql": _opsline("postgresql"),
    }
    with contextlib.suppress(ImportError):
        from bench.peers import PEERS

        found.update(PEERS)
    return found


QUICK_SYSTEMS = "opsline_sqlite,opsline_postgresql,dramatiq_rabbitmq"

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--quick" in argv and not any(a.startswith("--only") for a in argv):
        argv += ["--only", QUICK_SYSTEMS]  # under a minute: the two engines and the best peer
    main(
        systems(),
        subjects=["opsline_sqlite", "opsline_sqlite_full", "opsline_postgresql"],
        baselines=["dramatiq_rabbitmq", "pgqueuer_postgres", "celery_rabbitmq"],
        description="Opsline's engine against Dramatiq, PgQueuer and Celery",
        argv=argv,
    )
