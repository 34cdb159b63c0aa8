"""Dramatiq broker and no-op actor, imported by the benchmark and by ``dramatiq`` workers."""

from __future__ import annotations

import dramatiq
from bench._harness import record
from bench.peers._settings import DRAMATIQ_QUEUE, RABBITMQ_URL
from dramatiq.brokers.rabbitmq import RabbitmqBroker

broker = RabbitmqBroker(url=RABBITMQ_URL)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=DRAMATIQ_QUEUE, max_retries=0)
def noop(seq: int) -> None:
    record(seq)
