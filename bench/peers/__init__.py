"""Peer job systems measured by the Opsline job benchmark (see ``bench/README.md``).

``PEERS`` maps a system name to its ``run(n_jobs, latency_samples) -> dict`` function.
Each module imports its library only inside ``run`` so that one missing or broken peer
becomes an error in its own slot.
"""

from __future__ import annotations

from bench._harness import SystemRun
from bench.peers import celery_rabbitmq, dramatiq_rabbitmq, pgqueuer_pg

PEERS: dict[str, SystemRun] = {
    "dramatiq_rabbitmq": dramatiq_rabbitmq.run,
    "pgqueuer_postgres": pgqueuer_pg.run,
    "celery_rabbitmq": celery_rabbitmq.run,
}

__all__ = ["PEERS"]
