"""Waking workers: the PostgreSQL listener and the queue planner's spare slots."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import text

from opsline.db import Database
from opsline.platform.engine import _wake
from opsline.platform.engine._planner import QueuePlanner
from opsline.platform.engine._store import Store
from opsline.platform.engine.enqueue import JobSpec, enqueue_many
from tests.platform.engine.helpers import wait_until


def _notify(db: Database, times: int = 1) -> None:
    with db.engine.begin() as conn:
        for _ in range(times):
            conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": _wake.CHANNEL})


def test_a_muted_listener_rings_for_nothing_then_once_for_what_came_meanwhile(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the worker is full the listener leaves the notifications in its socket
    (no wake-up per enqueue); when the worker listens again, one ring covers them."""
    if db.dialect != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    monkeypatch.setattr(_wake, "MUTED_DRAIN_SECONDS", 30.0)
    wake = threading.Event()
    doorbell = _wake.Doorbell(wake)
    listener = _wake.PostgresListener(_wake.psycopg_conninfo(db.engine), doorbell)
    listener.start()
    try:
        wait_until(lambda: (_notify(db), wake.wait(0.1))[1], timeout=10)
        doorbell.listen(False)
        _notify(db)  # taken by a read begun before the mute, or left for the drain
        time.sleep(0.7)  # past the listening read's timeout: the listener is muted now
        wake.clear()
        _notify(db, times=50)
        time.sleep(0.3)
        assert not wake.is_set()
        doorbell.listen(True)  # nothing new is sent: the drain itself rings
        assert wake.wait(5)
        wake.clear()
        _notify(db)
        assert wake.wait(5)
    finally:
        listener.stop()


def test_a_free_slot_planned_for_an_empty_queue_goes_to_a_busy_one(db: Database) -> None:
    planner = QueuePlanner(["high", "default", "low"], {"high": 6, "default": 3, "low": 1})
    plans = [planner.plan(1) for _ in range(10)]
    # Every plan names every queue, its one slot first: spare slots have somewhere to go.
    assert all(sorted(q for q, _ in plan) == ["default", "high", "low"] for plan in plans)
    assert sorted(plan[0][0] for plan in plans).count("high") == 6
    enqueue_many(db, [JobSpec("tests.record_high", {"value": n}) for n in range(3)])
    store = Store(db, "w", 30)
    plan = next(plan for plan in plans if plan[0][0] == "low")
    claimed = store.cycle([], plan, promote=False)[0]
    assert [job.queue for job in claimed] == ["high"]
    planner.note_claimed(plan, claimed)
    assert planner.empty == {"low"}
