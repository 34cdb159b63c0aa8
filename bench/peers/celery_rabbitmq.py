"""Celery + RabbitMQ: ``celery worker --pool prefork --concurrency 2``, defaults otherwise."""

from __future__ import annotations

import contextlib
from typing import Any

from bench._harness import Recorder, Workers, measure_queue, package_version, python_command

CONCURRENCY = 2


def run(n_jobs: int, latency_samples: int) -> dict[str, Any]:
    from bench.peers import _celery_app
    from bench.peers._settings import CELERY_QUEUE

    app = _celery_app.app
    delay = _celery_app.noop.delay

    def reset() -> None:
        app.control.purge()

    def workers(recorder: Recorder) -> Workers:
        cmd = python_command(
            "-m", "celery", "--app", "bench.peers._celery_app", "worker",
            "--pool", "prefork", "--concurrency", str(CONCURRENCY),
            "--queues", CELERY_QUEUE, "--loglevel", "WARNING",
        )  # fmt: skip
        return Workers([cmd], recorder.env, recorder.dir)

    try:
        return measure_queue(
            n_jobs=n_jobs,
            latency_samples=latency_samples,
            reset=reset,
            enqueue=delay,
            workers=workers,
            workers_desc=f"celery worker --pool prefork --concurrency {CONCURRENCY}",
            extra={"version": package_version("celery")},
        )
    finally:
        # The app's producer pool stays open for the next pass (a closed pool cannot be reused).
        with contextlib.suppress(Exception):
            app.control.purge()
