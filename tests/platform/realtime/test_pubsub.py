"""The "something changed" pub/sub: in-process, Redis, PostgreSQL NOTIFY."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import orjson
import pytest

from opsline.platform.realtime import InProcessPubSub, PostgresPubSub, PubSub, RedisPubSub
from opsline.platform.realtime.pubsub import PG_PAYLOAD_LIMIT, notify_payloads, spliced_payload


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
