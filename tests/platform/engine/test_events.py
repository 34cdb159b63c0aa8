"""Domain events: the log, one job per listener, isolation, replay."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from opsline.db import Database, utcnow
from opsline.platform.engine.events import from_envelope, publish, replay
from opsline.platform.engine.models import events_table, jobs_table
from opsline.settings import Settings
from tests.platform.engine import sample_jobs
from tests.platform.engine.helpers import all_final, running_worker, states, wait_until
from tests.platform.engine.sample_events import OrderApproved

J = jobs_table.c


def _approved(tenant: uuid.UUID | None = None) -> OrderApproved:
    return OrderApproved(tenant_id=tenant or uuid.uuid4(), order_id=uuid.uuid4(), amount_cents=990)


def test_publish_stores_event_and_one_job_per_listener(db: Database) -> None:
    event = _approved()
    with db.unit_of_work() as uow:
        publish(uow, event)
    with db.read() as session:
        logged = session.execute(select(events_table)).one()
        names = sorted(session.execute(select(J.name, J.tenant_id)).all())
    assert (logged.id, logged.type, logged.version) == (event.id, "tests.order_approved", 1)
    assert logged.payload == {"order_id": str(event.order_id), "amount_cents": 990}
    assert names == [
        ("when_order_approved_fail", event.tenant_id),
        ("when_order_approved_record", event.tenant_id),
    ]


def test_rolled_back_publish_leaves_neither_event_nor_job(db: Database) -> None:
    with pytest.raises(RuntimeError):
        _then_fail(db)
    with db.read() as session:
        assert session.execute(select(events_table)).first() is None
    assert states(db) == {}


def test_failing_listener_never_blocks_another(db: Database, engine_settings: Settings) -> None:
    event = _approved()
    with db.unit_of_work() as uow:
        publish(uow, event)
    with running_worker(db, engine_settings):
        wait_until(lambda: all_final(db))
    assert sample_jobs.CALLS["approved"] == [(event.order_id, event.tenant_id, 990)]
    assert sample_jobs.CALLS["failing_listener"] == [1, 2]
    assert states(db) == {"succeeded": 1, "dead": 1}


def test_event_round_trips_through_its_envelope() -> None:
    event = _approved()
    assert from_envelope(event.envelope()) == event


def test_replay_enqueues_one_listener_for_each_event_since(db: Database) -> None:
    tenant = uuid.uuid4()
    with db.unit_of_work() as uow:
        publish(uow, _approved(tenant), _approved(tenant), _approved())
    before = states(db)["available"]
    count = replay(
        db,
        listener_name="when_order_approved_record",
        since=utcnow() - timedelta(minutes=1),
        tenant_id=tenant,
    )
    assert count == 2
    assert states(db)["available"] == before + 2


def _then_fail(db: Database) -> None:
    with db.unit_of_work() as uow:
        publish(uow, _approved())
        raise RuntimeError("business rule failed")
