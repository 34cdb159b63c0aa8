"""The "something changed" pub/sub: in-process, Redis, PostgreSQL NOTIFY."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import psycopg
import pytest

from opsline.platform.realtime import (
    InProcessPubSub,
    PostgresPubSub,
    PubSub,
    RedisPubSub,
    create_pubsub,
)
from opsline.platform.realtime._listener import BACKLOG
from opsline.platform.realtime.pubsub import PG_PAYLOAD_LIMIT, notify_payloads, spliced_payload
from opsline.settings import Settings


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def pubsub(request: pytest.FixtureRequest) -> Iterator[PubSub]:
    if request.param == "memory":
        bus: PubSub = InProcessPubSub()
    elif request.param == "redis":
        bus = RedisPubSub(request.getfixturevalue("redis_url"))
    else:
        url = os.environ.get("OPSLINE_TEST_DATABASE_URL")
        if not url:
            pytest.skip("PostgreSQL suite skipped: OPSLINE_TEST_DATABASE_URL is not set")
        bus = PostgresPubSub(url)
    yield bus
    bus.close()


def test_subscriber_receives_messages_of_its_channel_only(pubsub: PubSub) -> None:
    mine, other = f"tenant:{uuid.uuid4()}", f"tenant:{uuid.uuid4()}"
    subscription = pubsub.subscribe(mine)
    try:
        subscription.get(timeout=0.2)  # let the subscription settle (Redis)
        pubsub.publish(other, {"kind": "job", "id": 1})
        pubsub.publish(mine, {"kind": "job", "id": 2})
        received = subscription.get(timeout=5)
    finally:
        subscription.close()
    assert received == {"kind": "job", "id": 2, "channel": mine}


def test_publish_many_delivers_every_message_in_order(pubsub: PubSub) -> None:
    mine, other = f"tenant:{uuid.uuid4()}", f"orders:{uuid.uuid4()}"
    subscription = pubsub.subscribe(mine, other)
    try:
        subscription.get(timeout=0.2)  # let the subscription settle (Redis)
        pubsub.publish_many(
            [(mine, {"seq": 1}), (other, {"seq": 2}), (mine, {"seq": 3}), ("elsewhere", {"seq": 4})]
        )
        received = [subscription.get(timeout=5) for _ in range(3)]
        extra = subscription.get(timeout=0.2)
    finally:
        subscription.close()
    assert received == [
        {"seq": 1, "channel": mine},
        {"seq": 2, "channel": other},
        {"seq": 3, "channel": mine},
    ]
    assert extra is None


@pytest.mark.parametrize("kind", ["memory", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_subscriber_that_stops_reading_keeps_only_the_newest_messages(kind: str) -> None:
    """Messages are hints to re-read: a stalled stream holds BACKLOG of them, not
    every message of its tenant. (Redis bounds its own subscriber buffers.)"""
    if kind == "memory":
        bus: PubSub = InProcessPubSub()
    else:
        url = os.environ.get("OPSLINE_TEST_DATABASE_URL")
        if not url:
            pytest.skip("PostgreSQL suite skipped: OPSLINE_TEST_DATABASE_URL is not set")
        bus = PostgresPubSub(url)
    channel = f"tenant:{uuid.uuid4()}"
    subscription: Any = bus.subscribe(channel)
    try:
        bus.publish_many([(channel, {"seq": n}) for n in range(BACKLOG + 50)])
        deadline = time.monotonic() + 10
        while subscription.queue.dropped < 50:  # every message delivered by now
            assert time.monotonic() < deadline
            time.sleep(0.02)
        received = []
        while (message := subscription.get(timeout=0.2)) is not None:
            received.append(message["seq"])
    finally:
        subscription.close()
        bus.close()
    assert received == list(range(50, BACKLOG + 50))


def test_a_spliced_payload_is_the_payload_with_the_value_put_in() -> None:
    message = {"seq": 0, "order_id": "o-1", "status": "PAID", "total": "12.50"}
    spliced = spliced_payload("user:u", message, "seq")
    assert spliced is not None
    head, tail = spliced
    [whole] = notify_payloads([("user:u", {**message, "seq": 42})])
    assert orjson.loads(head + "42" + tail) == orjson.loads(whole)


def test_a_spliced_payload_over_the_limit_is_dropped() -> None:
    message = {"seq": 0, "blob": "x" * PG_PAYLOAD_LIMIT}
    assert spliced_payload("user:u", message, "seq") is None


@pytest.fixture
def pg_bus(settings: Settings) -> Iterator[PostgresPubSub]:
    """A PostgreSQL NOTIFY pub/sub on a fresh database of its own."""
    if settings.is_sqlite:
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    bus = create_pubsub(settings)
    assert isinstance(bus, PostgresPubSub)
    yield bus
    bus.close()


@pytest.fixture
def admin(settings: Settings) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """A connection of its own to ``pg_bus``'s database, to watch and cut the listener."""
    url = settings.sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(url, autocommit=True) as connection:
        yield connection


def _listeners(admin: psycopg.Connection[tuple[Any, ...]]) -> list[tuple[int, str]]:
    """The pid and last statement of each other connection to this database that ran
    LISTEN or UNLISTEN last."""
    rows = admin.execute(
        "SELECT pid, query FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND (query ILIKE 'LISTEN%%' OR query ILIKE 'UNLISTEN%%')"
    ).fetchall()
    return [(int(pid), str(query)) for pid, query in rows]


def _until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_twenty_postgres_subscribers_share_one_listen_connection(
    pg_bus: PostgresPubSub, admin: psycopg.Connection[tuple[Any, ...]]
) -> None:
    mine = f"orders:{uuid.uuid4()}"
    subscriptions = [pg_bus.subscribe(mine) for _ in range(20)]
    try:
        listening = [q for _, q in _listeners(admin) if q.upper().startswith("LISTEN")]
        assert len(listening) == 1
        pg_bus.publish(mine, {"seq": 1})
        received = [s.get(timeout=5) for s in subscriptions]
    finally:
        for subscription in subscriptions:
            subscription.close()
    assert received == [{"seq": 1, "channel": mine}] * 20


def test_the_last_postgres_subscriber_leaving_unlistens(
    pg_bus: PostgresPubSub, admin: psycopg.Connection[tuple[Any, ...]]
) -> None:
    first, second = f"tenant:{uuid.uuid4()}", f"orders:{uuid.uuid4()}"
    subscriptions = [pg_bus.subscribe(first), pg_bus.subscribe(first, second)]
    subscriptions[0].close()
    [(pid, query)] = _listeners(admin)
    assert query.upper().startswith("LISTEN")  # one subscriber is left
    subscriptions[1].close()
    _until(lambda: [q.upper() for _, q in _listeners(admin)] == ["UNLISTEN OPSLINE_REALTIME"])
    # The same connection listens again for the next subscriber.
    again = pg_bus.subscribe(second)
    try:
        assert [(p, q.upper()[:6]) for p, q in _listeners(admin)] == [(pid, "LISTEN")]
        pg_bus.publish(second, {"seq": 2})
        assert again.get(timeout=5) == {"seq": 2, "channel": second}
    finally:
        again.close()


def test_a_dropped_listen_connection_reconnects_and_delivers_later_messages(
    pg_bus: PostgresPubSub, admin: psycopg.Connection[tuple[Any, ...]]
) -> None:
    mine = f"tenant:{uuid.uuid4()}"
    subscriptions = [pg_bus.subscribe(mine) for _ in range(3)]
    try:
        [(cut, _)] = _listeners(admin)
        admin.execute("SELECT pg_terminate_backend(%s)", [cut])
        _until(lambda: [p for p, _ in _listeners(admin) if p != cut] != [])
        pg_bus.publish(mine, {"seq": 3})
        received = [s.get(timeout=5) for s in subscriptions]
    finally:
        for subscription in subscriptions:
            subscription.close()
    assert received == [{"seq": 3, "channel": mine}] * 3
