"""Dramatiq + RabbitMQ: ``dramatiq --processes 2 --threads 8``, defaults otherwise."""

from __future__ import annotations

import contextlib
from typing import Any

from bench._harness import Recorder, Workers, measure_queue, package_version, python_command

PROCESSES = 2
THREADS = 8


def run(n_jobs: int, latency_samples: int) -> dict[str, Any]:
    from bench.peers import _dramatiq_app
    from bench.peers._settings import DRAMATIQ_QUEUE

    broker = _dramatiq_app.broker
    send = _dramatiq_app.noop.send

    def reset() -> None:
        broker.flush(DRAMATIQ_QUEUE)

    def workers(recorder: Recorder) -> Workers:
        cmd = python_command(
            "-m", "dramatiq", "bench.peers._dramatiq_app",
            "--processes", str(PROCESSES), "--threads", str(THREADS),
            "--queues", DRAMATIQ_QUEUE,
        )  # fmt: skip
        return Workers([cmd], recorder.env, recorder.dir)

    try:
        return measure_queue(
            n_jobs=n_jobs,
            latency_samples=latency_samples,
            reset=reset,
            enqueue=send,
            workers=workers,
            workers_desc=f"dramatiq --processes {PROCESSES} --threads {THREADS}",
            extra={"version": package_version("dramatiq")},
        )
    finally:
        with contextlib.suppress(Exception):
            broker.flush(DRAMATIQ_QUEUE)
        with contextlib.suppress(Exception):
            del broker.connection  # closes this thread's channel and connection
