"""Wiring the engine into a runtime: the pub/sub, and the embedded worker and scheduler."""

from __future__ import annotations

from opsline.platform.engine.changes import bind_pubsub
from opsline.platform.engine.metrics import register_queue_collector
from opsline.platform.engine.scheduler import Scheduler
from opsline.platform.engine.worker import Worker
from opsline.platform.realtime import create_pubsub
from opsline.platform.runtime import Runtime


def attach_engine(runtime: Runtime) -> None:
    """Give the runtime its pub/sub (bound for the engine's announcements) and
    report its queues' depth on ``/metrics``."""
    runtime.pubsub = create_pubsub(runtime.settings)
    bind_pubsub(runtime.db, runtime.pubsub)
    register_queue_collector(runtime.db)


def add_embedded_engine(runtime: Runtime) -> None:
    """Add worker threads (``embedded_workers``, all queues; their jobs' short
    units run on the server's event loop) and, if ``embedded_scheduler``, the
    scheduler to the services ``opsline serve`` runs."""
    settings = runtime.settings
    if settings.embedded_workers > 0:
        runtime.background.append(
            Worker(
                runtime.db,
                settings,
                concurrency=settings.embedded_workers,
                on_server_loop=True,
            )
        )
    if settings.embedded_scheduler:
        runtime.background.append(Scheduler(runtime.db, settings))
