"""After-commit "something changed" announcements from the engine."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from opsline.db import Database
from opsline.platform.engine.changes import bind_pubsub, channel
from opsline.platform.engine.events import publish
from opsline.platform.realtime import InProcessPubSub
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
