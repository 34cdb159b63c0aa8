"""Celery app and no-op task, imported by the benchmark and by ``celery worker``."""

from __future__ import annotations

from bench._harness import record
from bench.peers._settings import CELERY_QUEUE, RABBITMQ_URL
from celery import Celery

app = Celery("opsline_bench", broker=RABBITMQ_URL)
app.conf.update(
    task_default_queue=CELERY_QUEUE,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="opsline_bench.noop")
def noop(seq: int) -> None:
    record(seq)
