"""A small pub/sub for "something changed" messages (job, batch, event, ...).

Messages are small JSON objects published after commit on a channel such as
``tenant:<uuid>``; realtime endpoints subscribe and push them to clients, who
then re-read what changed. Delivery is best effort (at most once): a
subscriber that was not listening misses the message and must re-read state.

Implementations: in-process (the embedded default: one process serves and
works), Redis pub/sub (``OPSLINE_REDIS_URL``), PostgreSQL ``NOTIFY`` (payload
limit 8000 bytes; used when the database is PostgreSQL and no Redis is set;
its subscribers share one ``LISTEN`` connection per pub/sub, see ``_listener``).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import orjson
import structlog

from opsline.platform import loop
from opsline.platform.realtime._listener import Listener, Mailbox
from opsline.settings import Settings

log = structlog.get_logger(__name__)

Message = dict[str, Any]
PG_CHANNEL = "opsline_realtime"


class Subscription(Protocol):
    def get(self, timeout: float | None = None) -> Message | None:
        """The next message, or None after ``timeout`` seconds."""
        ...

    def close(self) -> None: ...


class PubSub(Protocol):
    def publish(self, channel: str, message: Message) -> None: ...

    def publish_many(self, messages: Sequence[tuple[str, Message]]) -> None:
        """Publish ``(channel, message)`` pairs in order, in one round trip where the
        backend allows (a unit of work's messages go out together)."""
        ...

    def subscribe(self, *channels: str) -> Subscription: ...

    def close(self) -> None: ...


class _QueueSubscription:
    def __init__(self, unsubscribe: Any) -> None:
        self.queue = Mailbox()  # bounded: a subscriber that stops reading keeps the newest
        self._unsubscribe = unsubscribe

    def get(self, timeout: float | None = None) -> Message | None:
        return self.queue.get(timeout)

    def close(self) -> None:
        self._unsubscribe(self)

    def __iter__(self) -> Iterator[Message]:
        while True:
            message = self.get()
            if message is not None:
                yield message


class InProcessPubSub:
    """Fan-out to subscribers in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[str, list[_QueueSubscription]] = defaultdict(list)

    def publish(self, channel: str, message: Message) -> None:
        with self._lock:
            targets = list(self._subscribers.get(channel, ()))
        for subscription in targets:
            subscription.queue.put({**message, "channel": channel})

    def publish_many(self, messages: Sequence[tuple[str, Message]]) -> None:
        for channel, message in messages:
            self.publish(channel, message)

    def subscribe(self, *channels: str) -> _QueueSubscription:
        subscription = _QueueSubscription(lambda s: self._remove(s, channels))
        with self._lock:
            for channel in channels:
                self._subscribers[channel].append(subscription)
        return subscription

    def _remove(self, subscription: _QueueSubscription, channels: tuple[str, ...]) -> None:
        with self._lock:
            for channel in channels:
                if subscription in self._subscribers.get(channel, []):
                    self._subscribers[channel].remove(subscription)

    def close(self) -> None:
        with self._lock:
            self._subscribers.clear()


class RedisPubSub:
    """Redis ``PUBLISH``/``SUBSCRIBE``; one connection pool per process."""

    def __init__(self, url: str) -> None:
        import redis
        import redis.asyncio

        self._client = redis.Redis.from_url(url)
        # Publishing from a use case on the event loop (after its commit) is awaited.
        self._on_loop = loop.PerLoop(
            lambda: redis.asyncio.Redis.from_pool(loop.redis_pool(url)),
            lambda client: client.aclose(),
        )

    def publish(self, channel: str, message: Message) -> None:
        self.publish_many([(channel, message)])

    def publish_many(self, messages: Sequence[tuple[str, Message]]) -> None:
        payloads = [(name, orjson.dumps({**body, "channel": name})) for name, body in messages]
        loop.call(
            lambda: self._publish(payloads),
            lambda: self._publish_on_loop(payloads),
        )

    def _publish(self, payloads: Sequence[tuple[str, bytes]]) -> None:
        pipeline = self._client.pipeline(transaction=False)
        for channel, payload in payloads:
            pipeline.publish(channel, payload)
        pipeline.execute()

    async def _publish_on_loop(self, payloads: Sequence[tuple[str, bytes]]) -> None:
        async with self._on_loop.get().pipeline(transaction=False) as pipeline:
            for channel, payload in payloads:
                pipeline.publish(channel, payload)
            await pipeline.execute()

    def subscribe(self, *channels: str) -> Subscription:
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        pubsub.subscribe(*channels)
        return _RedisSubscription(pubsub)

    def close(self) -> None:
        self._client.close()


class _RedisSubscription:
    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub

    def get(self, timeout: float | None = None) -> Message | None:
        # Subscribe confirmations (one per channel) are read and skipped here.
        deadline = time.monotonic() + (timeout if timeout is not None else 3600.0)
        while True:
            left = max(0.0, deadline - time.monotonic())
            raw = self._pubsub.get_message(timeout=left)
            if raw is not None and raw.get("type") == "message":
                message: Message = orjson.loads(raw["data"])
                return message
            if time.monotonic() >= deadline:
                return None

    def close(self) -> None:
        self._pubsub.close()


class PostgresPubSub:
    """PostgreSQL ``NOTIFY`` on one channel; subscribers filter by logical channel.

    Publishing uses a connection of its own (opened on first use); subscribers
    share one ``LISTEN`` connection (opened on first subscription), which hands
    each of them the messages of its channels.
    """

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._lock = threading.Lock()
        self._connection: Any = None
        self._listener = Listener(conninfo, PG_CHANNEL)

    def publish(self, channel: str, message: Message) -> None:
        self.publish_many([(channel, message)])

    def publish_many(self, messages: Sequence[tuple[str, Message]]) -> None:
        import psycopg

        statement = notify_statement(messages)
        if statement is None:
            return
        with self._lock:
            if self._connection is None or self._connection.closed:
                self._connection = psycopg.connect(self._conninfo, autocommit=True)
            self._connection.execute(*statement)

    def subscribe(self, *channels: str) -> Subscription:
        """A subscription to ``channels``, live once this returns (see :meth:`Listener.add`)."""
        wanted = set(channels)
        subscription = _QueueSubscription(lambda s: self._listener.remove(s.queue, wanted))
        self._listener.add(subscription.queue, wanted)
        return subscription

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            if self._connection is not None:
                self._connection.close()


# PostgreSQL refuses a NOTIFY payload of 8000 bytes or more.
PG_PAYLOAD_LIMIT = 8000


def notify_statement(messages: Sequence[tuple[str, Message]]) -> tuple[str, list[str]] | None:
    """One ``SELECT pg_notify(...), ...`` for ``messages`` (in order), or None if none fit.

    Run in a transaction, PostgreSQL delivers the notifications when it commits
    and drops them if it rolls back.
    """
    payloads = notify_payloads(messages)
    if not payloads:
        return None
    params = [value for payload in payloads for value in (PG_CHANNEL, payload)]
    return "SELECT " + ", ".join(["pg_notify(%s, %s)"] * len(payloads)), params


def notify_payloads(messages: Sequence[tuple[str, Message]]) -> list[str]:
    """The ``NOTIFY`` payloads of ``messages`` on :data:`PG_CHANNEL`, in order.

    A message over the payload limit is dropped with a warning (delivery is
    best effort) rather than failing the statement that would carry it.
    """
    payloads: list[str] = []
    for channel, message in messages:
        payload = _fitting_payload(channel, message)
        if payload is not None:
            payloads.append(payload)
    return payloads


def _fitting_payload(channel: str, message: Message, room: int = 0) -> str | None:
    """``message``'s payload on ``channel``, or None (logged) if it is over the limit
    with ``room`` bytes to spare."""
    payload = orjson.dumps({**message, "channel": channel}).decode()
    if len(payload.encode()) + room >= PG_PAYLOAD_LIMIT:
        log.warning("realtime_message_too_large", channel=channel, bytes=len(payload))
        return None
    return payload


def spliced_payload(channel: str, message: Message, first: str) -> tuple[str, str] | None:
    """The ``NOTIFY`` payload of ``message`` on ``channel``, cut where ``message[first]`` goes.

    For a value that the statement sending the ``NOTIFY`` assigns (a log's
    sequence number, at most 20 digits): the statement puts the value's JSON
    text between the two parts, and subscribers receive what
    :func:`notify_payloads` would give. None if the message is too large.
    """
    rest = {key: value for key, value in message.items() if key != first}
    payload = _fitting_payload(channel, {first: None, **rest}, room=20)
    if payload is None:
        return None
    head = "{" + orjson.dumps(first).decode() + ":"
    return head, payload.removeprefix(head + "null")


def create_pubsub(settings: Settings) -> PubSub:
    """Redis when configured, else PostgreSQL NOTIFY on PostgreSQL, else in-process."""
    if settings.redis_url:
        return RedisPubSub(settings.redis_url)
    if not settings.is_sqlite:
        url = settings.sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)
        return PostgresPubSub(url)
    return InProcessPubSub()
