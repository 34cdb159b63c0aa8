"""Realtime fan-out of "something changed" messages (see ``pubsub.py``)."""

from opsline.platform.realtime.pubsub import (
    InProcessPubSub,
    PostgresPubSub,
    PubSub,
    RedisPubSub,
    Subscription,
    create_pubsub,
)

__all__ = [
    "InProcessPubSub",
    "PostgresPubSub",
    "PubSub",
    "RedisPubSub",
    "Subscription",
    "create_pubsub",
]
