"""After-commit "something changed" announcements from the engine."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import select

from opsline.db import Database
from opsline.platform.engine.changes import bind_pubsub, channel, send_after_commit
from opsline.platform.engine.events import publish
from opsline.platform.engine.models import events_table
from opsline.platform.realtime import InProcessPubSub, PostgresPubSub, create_pubsub
from opsline.platform.realtime.pubsub import Subscription
from opsline.settings import Settings
from tests.platform.engine import sample_jobs
from tests.platform.engine.helpers import job_row, running_worker, wait_until
from tests.platform.engine.sample_events import OrderApproved


@pytest.fixture
def bus(db: Database) -> Iterator[InProcessPubSub]:
    pubsub = InProcessPubSub()
    bind_pubsub(db, pubsub)
    yield pubsub
    bind_pubsub(db, None)


def test_published_event_is_announced_after_commit_only(db: Database, bus: InProcessPubSub) -> None:
    tenant = uuid.uuid4()
    subscription = bus.subscribe(channel(tenant))
    event = OrderApproved(tenant_id=tenant, order_id=uuid.uuid4(), amount_cents=1)
    with pytest.raises(RuntimeError):
        _publish_then_fail(
            db, OrderApproved(tenant_id=tenant, order_id=uuid.uuid4(), amount_cents=2)
        )
    assert subscription.get(timeout=0) is None
    with db.unit_of_work() as uow:
        publish(uow, event)
    message = subscription.get(timeout=1)
    assert message is not None
    assert (message["kind"], message["id"]) == ("event", str(event.id))


def test_worker_announces_finished_jobs(
    db: Database, engine_settings: Settings, bus: InProcessPubSub
) -> None:
    tenant = uuid.uuid4()
    subscription = bus.subscribe(channel(tenant))
    job_id = sample_jobs.echo.enqueue(db, tenant_id=tenant, value=1)
    with running_worker(db, engine_settings):
        wait_until(lambda: job_row(db, job_id).state == "succeeded")
    message = subscription.get(timeout=5)
    assert message == {"kind": "jobs", "ids": [job_id], "channel": channel(tenant)}


def _publish_then_fail(db: Database, event: OrderApproved) -> None:
    with db.unit_of_work() as uow:
        publish(uow, event)
        raise RuntimeError("abort")


@pytest.fixture
def notify_bus(db: Database) -> Iterator[PostgresPubSub]:
    if db.dialect != "postgresql":
        pytest.skip("PostgreSQL NOTIFY")
    pubsub = create_pubsub(db.settings)
    assert isinstance(pubsub, PostgresPubSub)
    bind_pubsub(db, pubsub)
    yield pubsub
    bind_pubsub(db, None)
    pubsub.close()


@pytest.fixture
def tenant() -> uuid.UUID:
    return uuid.uuid4()


@pytest.fixture
def notified(notify_bus: PostgresPubSub, tenant: uuid.UUID) -> Iterator[Subscription]:
    """A subscription to ``tenant``'s channel through PostgreSQL NOTIFY."""
    subscription = notify_bus.subscribe(channel(tenant))
    yield subscription
    subscription.close()


def test_postgres_notify_rides_in_the_transaction_and_arrives_on_commit(
    db: Database, notify_bus: PostgresPubSub, tenant: uuid.UUID, notified: Subscription
) -> None:
    with pytest.raises(RuntimeError):
        _publish_then_fail(
            db, OrderApproved(tenant_id=tenant, order_id=uuid.uuid4(), amount_cents=2)
        )
    event = OrderApproved(tenant_id=tenant, order_id=uuid.uuid4(), amount_cents=1)
    with db.unit_of_work() as uow:
        publish(uow, event)
        uow.run_last()  # the NOTIFY is sent now, inside the open transaction
        assert notified.get(timeout=0.3) is None
    message = notified.get(timeout=5)
    assert message is not None
    assert (message["kind"], message["id"]) == ("event", str(event.id))
    assert notified.get(timeout=0.3) is None  # the rolled-back one never came
    # No connection of the pub/sub's own was used to publish.
    assert notify_bus._connection is None


def test_postgres_notify_carries_the_writes_held_back(
    db: Database, tenant: uuid.UUID, notified: Subscription
) -> None:
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event = OrderApproved(tenant_id=tenant, order_id=uuid.uuid4(), amount_cents=3)
    sa_event.listen(db.engine, "before_cursor_execute", record)
    try:
        with db.unit_of_work() as uow:
            publish(uow, event)  # the row and its NOTIFY are both held back
            uow.run_last()
            assert statements == []  # nothing sent yet: it all goes with the commit
    finally:
        sa_event.remove(db.engine, "before_cursor_execute", record)
    # one round trip for the row and the NOTIFY, as the unit's closing statement
    carried = [s for s in statements if "pg_notify" in s]
    assert len(carried) == 1 and "INSERT INTO events" in carried[0]
    message = notified.get(timeout=5)
    assert message is not None and message["id"] == str(event.id)
    with db.read() as session:
        stored = session.scalar(select(events_table.c.id).where(events_table.c.id == event.id))
    assert stored == event.id


def test_postgres_message_over_the_payload_limit_is_dropped_not_fatal(
    db: Database, tenant: uuid.UUID, notified: Subscription
) -> None:
    with db.unit_of_work() as uow:
        send_after_commit(uow, channel(tenant), {"kind": "big", "blob": "x" * 9000})
        send_after_commit(uow, channel(tenant), {"kind": "small"})
        job_id = sample_jobs.echo.enqueue(uow, tenant_id=tenant, value=1)
    assert job_row(db, job_id) is not None  # the transaction committed
    assert notified.get(timeout=5) == {"kind": "small", "channel": channel(tenant)}
