"""Realtime fan-out of "something changed" messages (see ``pubsub.py``)."""

from opsline.platform.realtime.pubsub import (
    InProcessPubSub,
    PostgresPubSub,
    PubSub,
    RedisPubSub,
    Subscription,
    create_pubsub,
)
from opsline.platform.realtime.streams import StreamSlots

__all__ = [
    "InProcessPubSub",
    "PostgresPubSub",
    "PubSub",
    "RedisPubSub",
    "StreamSlots",
    "Subscription",
    "create_pubsub",
]
