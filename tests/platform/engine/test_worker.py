"""Worker behaviour: fencing, rescue, cancellation, timeouts, limits, fairness."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.engine import Engine

from opsline.db import Database, utcnow
from opsline.platform.engine._rescue import rescue_expired
from opsline.platform.engine._store import Outcome, Store
from opsline.platform.engine.enqueue import JobSpec, enqueue, enqueue_many
from opsline.platform.engine.models import job_errors_table, jobs_table
from opsline.platform.engine.worker import Worker
from opsline.settings import Settings
from tests.platform.engine import sample_jobs
from tests.platform.engine.helpers import all_final, job_row, running_worker, states, wait_until

J = jobs_table.c


def test_rescued_job_is_retried_and_late_ack_of_lost_worker_is_ignored(db: Database) -> None:
    job_id = enqueue(db, "tests.noop")
    lost, rescuer = Store(db, "lost", 30), Store(db, "rescuer", 30)
    [first] = lost.cycle([], [("default", 1)], promote=False)[0]
    assert rescue_expired(db, now=utcnow() + timedelta(seconds=31)) == 1
    row = job_row(db, job_id)
    assert (row.state, row.attempt, row.last_error.startswith("WorkerLost")) == (
        "available",
        1,
        True,
    )
    [second] = rescuer.cycle([], [("default", 1)], promote=False)[0]
    assert second.attempt == 2
    # The lost worker wakes up and acks its stale attempt: fenced out.
    applied = lost.cycle([Outcome(first, "succeeded")], [], promote=False)[1]
    assert applied.outcomes == []
    assert lost.heartbeat([first]) == (set(), set())
    assert job_row(db, job_id).state == "running"
    rescuer.cycle([Outcome(second, "succeeded")], [], promote=False)
    assert (job_row(db, job_id).state, job_row(db, job_id).attempt) == ("succeeded", 2)


def test_heartbeat_keeps_the_lease_alive(db: Database) -> None:
    enqueue(db, "tests.noop")
    store = Store(db, "w", 30)
    [job] = store.cycle([], [("default", 1)], promote=False)[0]
    before = job_row(db, job.id).lease_expires_at
    assert store.heartbeat([job]) == ({job.id}, set())
    assert job_row(db, job.id).lease_expires_at >= before
    assert rescue_expired(db) == 0


def test_rescue_on_last_attempt_marks_dead_with_reason(db: Database) -> None:
    job_id = enqueue(db, "tests.wait_cancel")  # max_attempts=1
    Store(db, "lost", 30).cycle([], [("default", 1)], promote=False)
    rescue_expired(db, now=utcnow() + timedelta(seconds=31))
    assert job_row(db, job_id).state == "dead"
    with db.read() as session:
        kinds = session.execute(select(job_errors_table.c.error_type)).scalars().all()
    assert kinds == ["WorkerLost"]


def test_cancelling_a_running_job_is_cooperative(db: Database, engine_settings: Settings) -> None:
    fast = engine_settings.model_copy(update={"job_lease_seconds": 0.6})
    job_id = enqueue(db, "tests.wait_cancel")
    with running_worker(db, fast):
        wait_until(lambda: job_row(db, job_id).state == "running")
        with db.unit_of_work() as uow:
            uow.session.execute(
                update(jobs_table).where(J.id == job_id).values(cancel_requested=True)
            )
        wait_until(lambda: job_row(db, job_id).state == "cancelled")


def test_job_past_its_timeout_fails_and_is_retried(db: Database, engine_settings: Settings) -> None:
    job_id = enqueue(db, "tests.slow", {"key": "t"})
    with running_worker(db, engine_settings):
        wait_until(lambda: job_row(db, job_id).state == "succeeded")
    assert sample_jobs.CALLS["t"] == [1, 2]
    with db.read() as session:
        kinds = session.execute(select(job_errors_table.c.error_type)).scalars().all()
    assert kinds == ["JobTimeout"]


def test_concurrency_key_limits_running_jobs(db: Database, engine_settings: Settings) -> None:
    enqueue_many(db, [JobSpec("tests.keyed", {"room": "a", "n": n}) for n in range(6)])
    with running_worker(db, engine_settings, concurrency=6):
        wait_until(lambda: all_final(db))
    trace = sample_jobs.CALLS["keyed_a"]
    # With a limit of one, no job of the key starts before the previous one ended.
    assert [kind for kind, _ in trace] == ["start", "end"] * 6
    assert states(db) == {"succeeded": 6}


def test_busy_high_queue_never_starves_low(db: Database, engine_settings: Settings) -> None:
    enqueue_many(db, [JobSpec("tests.record_high", {"value": n}) for n in range(200)])
    enqueue_many(db, [JobSpec("tests.record_queue", {"value": n}) for n in range(5)])
    one = engine_settings.model_copy(update={"job_queue_weights": {"high": 6, "low": 1}})
    with running_worker(db, one, queues=["high", "low"], concurrency=1):
        wait_until(lambda: all_final(db))
    order = sample_jobs.CALLS["order"]
    last_low = max(i for i, (queue, _) in enumerate(order) if queue == "low")
    # All five low jobs ran while more than half of the high queue was still waiting.
    assert last_low < 100


def test_tenants_alternate_inside_a_queue(db: Database) -> None:
    big, small = uuid.uuid4(), uuid.uuid4()
    enqueue_many(db, [JobSpec("tests.echo", {"value": n}, tenant_id=big) for n in range(100)])
    enqueue_many(db, [JobSpec("tests.echo", {"value": n}, tenant_id=small) for n in range(3)])
    store = Store(db, "w", 30)
    claimed = store.cycle([], [("default", 8)], promote=False)[0]
    # The small tenant's three jobs are among the first claimed, not after 100 others.
    assert sum(job.tenant_id == small for job in claimed) == 3


def test_a_cycle_claims_every_share_at_once_and_gives_drained_slots_away(db: Database) -> None:
    enqueue_many(db, [JobSpec("tests.record_high", {"value": n}) for n in range(5)])
    enqueue(db, "tests.record_queue", {"value": 0})
    store = Store(db, "w", 30)
    claims: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if "candidates" in statement:
            claims.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        claimed = store.cycle([], [("high", 2), ("default", 2), ("low", 2)], promote=False)[0]
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    # Each queue's share first (default has none: its slots go to high, not drained).
    assert [job.queue for job in claimed] == ["high", "high", "low", "high", "high", "high"]
    # PostgreSQL: the three shares in one statement, then the spare slots; SQLite per queue.
    assert len(claims) == (2 if db.dialect == "postgresql" else 0)


@pytest.mark.parametrize("fair", [True, False], ids=["due now", "delayed"])
def test_a_unique_job_finishing_while_its_key_is_enqueued_again_frees_the_key(
    db: Database, fair: bool
) -> None:
    """PostgreSQL: the pending job that made the insert skip finishes before the
    look-up of it; the key is free, so the job is queued after all."""
    if db.is_sqlite:
        pytest.skip("one writer at a time on SQLite: nothing finishes in between")
    order = uuid.uuid4()
    first = sample_jobs.unique_job.enqueue(db, order_id=order)
    finished: list[int] = []

    def finish_first(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if (
            not finished
            and statement.lstrip().startswith("SELECT jobs.id")
            and "unique_key" in statement
        ):
            with db.engine.begin() as other:  # a worker acks it meanwhile
                other.execute(update(jobs_table).where(J.id == first).values(state="succeeded"))
            finished.append(first)

    event.listen(Engine, "before_cursor_execute", finish_first)
    try:
        delay = None if fair else 60
        second = sample_jobs.unique_job.enqueue(db, order_id=order, delay=delay)
    finally:
        event.remove(Engine, "before_cursor_execute", finish_first)
    assert finished == [first] and second != first
    assert job_row(db, second).state == ("available" if fair else "scheduled")


def test_many_threads_enqueueing_one_unique_key_make_one_job(db: Database) -> None:
    order = uuid.uuid4()
    ids: list[int] = []
    barrier = threading.Barrier(8)

    def enqueue_same() -> None:
        barrier.wait()
        ids.append(sample_jobs.unique_job.enqueue(db, order_id=order))

    threads = [threading.Thread(target=enqueue_same) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 1 and len(ids) == 8
    assert states(db) == {"available": 1}


def test_stop_gives_back_unstarted_jobs(db: Database, engine_settings: Settings) -> None:
    enqueue(db, "tests.wait_cancel")
    enqueue_many(db, [JobSpec("tests.wait_cancel") for _ in range(3)])
    quick = engine_settings.model_copy(update={"job_shutdown_grace_seconds": 0.1})
    with running_worker(db, quick, concurrency=1):
        wait_until(lambda: states(db).get("running", 0) >= 1)
    current = states(db)
    assert current.get("running", 0) == 0
    assert current["available"] == 4
    with db.read() as session:
        attempts = session.execute(select(J.attempt)).scalars().all()
    assert set(attempts) == {0}


def test_a_job_running_in_the_stop_grace_keeps_its_lease(
    db: Database, engine_settings: Settings
) -> None:
    """A stopping worker renews its leases until it has given every job back, so
    a job still running in the grace is not rescued (and run a second time)."""
    short = engine_settings.model_copy(
        update={"job_lease_seconds": 0.9, "job_shutdown_grace_seconds": 10.0}
    )
    job_id = enqueue(db, "tests.sleep", {"seconds": 2.5, "key": "grace"})
    worker = Worker(db, short, concurrency=1)
    worker.start()
    wait_until(lambda: bool(sample_jobs.CALLS["grace"]))
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    rescued = 0
    try:
        while stopper.is_alive():  # about two and a half lease lengths
            rescued += rescue_expired(db)
            time.sleep(0.1)
    finally:
        stopper.join()
    assert rescued == 0
    assert sample_jobs.CALLS["grace"] == [1]
    row = job_row(db, job_id)
    assert (row.state, row.attempt) == ("succeeded", 1)


def test_rate_limited_jobs_wait_for_the_window_without_using_attempts(
    db: Database, engine_settings: Settings
) -> None:
    enqueue_many(db, [JobSpec("tests.rated", {"account": "a"}) for _ in range(4)])
    enqueue_many(db, [JobSpec("tests.rated", {"account": "b"})])
    with running_worker(db, engine_settings, concurrency=2):
        wait_until(lambda: states(db).get("succeeded", 0) == 3 and states(db).get("scheduled") == 2)
    assert len(sample_jobs.CALLS["rated_a"]) == 2 and len(sample_jobs.CALLS["rated_b"]) == 1
    with db.read() as session:
        waiting = session.execute(select(J.attempt).where(J.state == "scheduled")).scalars().all()
    assert waiting == [0, 0]


def test_a_full_worker_stops_listening_for_new_jobs_until_it_has_room(
    db: Database, engine_settings: Settings
) -> None:
    """A worker holding all the jobs it can take mutes its doorbell (enqueues and, on
    SQLite, the file watcher); its own finished jobs wake it, and it listens again."""
    fast = engine_settings.model_copy(update={"job_lease_seconds": 0.6})
    with running_worker(db, fast, concurrency=1) as worker:
        doorbell = worker._doorbell
        assert doorbell.listening.is_set()
        ids = [enqueue(db, "tests.wait_cancel") for _ in range(worker.capacity)]
        wait_until(lambda: worker.held_count == worker.capacity)
        wait_until(lambda: not doorbell.listening.is_set())
        later = enqueue(db, "tests.noop")  # rung while muted: no wake, no claim
        with db.unit_of_work() as uow:
            uow.session.execute(
                update(jobs_table).where(J.id.in_(ids)).values(cancel_requested=True)
            )
        wait_until(lambda: job_row(db, later).state == "succeeded")
        wait_until(doorbell.listening.is_set)
        assert all(job_row(db, job_id).state == "cancelled" for job_id in ids)


@contextmanager
def _embedded_on_a_server_loop(db: Database, settings: Settings) -> Iterator[Worker]:
    """A worker started as a server's lifespan starts it: from that server's loop."""
    loop = asyncio.new_event_loop()
    server = threading.Thread(target=loop.run_forever, name="server-loop", daemon=True)
    server.start()
    embedded = Worker(db, settings, concurrency=1, on_server_loop=True)

    async def start() -> None:
        embedded.start()

    asyncio.run_coroutine_threadsafe(start(), loop).result()
    try:
        yield embedded
    finally:
        embedded.stop()
        if db.dialect == "postgresql":
            asyncio.run_coroutine_threadsafe(db.dispose_on_loop(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        server.join()
        loop.close()


def test_an_embedded_worker_runs_its_jobs_short_units_on_the_servers_loop(
    db: Database, engine_settings: Settings
) -> None:
    """Started from a server's event loop (its lifespan), an embedded worker hands
    ``ctx.short_unit`` work to that loop; a worker of its own keeps it in the job's
    thread."""
    with _embedded_on_a_server_loop(db, engine_settings):
        enqueue(db, "tests.short_unit")
        wait_until(lambda: bool(sample_jobs.CALLS["short_unit"]))
    with running_worker(db, engine_settings, concurrency=1):
        enqueue(db, "tests.short_unit")
        wait_until(lambda: len(sample_jobs.CALLS["short_unit"]) == 2)
    assert sample_jobs.CALLS["short_unit"] == ["server-loop", "opsline-job"]
    assert states(db) == {"succeeded": 2}


def test_a_short_unit_failing_on_the_servers_loop_fails_its_job_and_writes_nothing(
    db: Database, engine_settings: Settings
) -> None:
    with _embedded_on_a_server_loop(db, engine_settings):
        job_id = enqueue(db, "tests.short_unit", {"fail": True})
        wait_until(lambda: job_row(db, job_id).state == "dead")
    with db.read() as session:
        errors = session.execute(
            select(job_errors_table.c.error_type, job_errors_table.c.message)
        ).all()
    assert [tuple(row) for row in errors] == [("ValueError", "the short unit failed")]
    assert states(db) == {"dead": 1}  # the job the unit enqueued was rolled back with it
    assert not sample_jobs.CALLS["short_unit"]
