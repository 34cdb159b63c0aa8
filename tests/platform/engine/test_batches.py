"""Batches: counts, progress, callbacks exactly once, cancellation."""

from __future__ import annotations

import threading
import uuid

from opsline.db import Database, utcnow
from opsline.platform.engine._engines import hot_engine
from opsline.platform.engine._store import ClaimedJob, Outcome, Store
from opsline.platform.engine.batches import (
    BatchCounts,
    cancel_batch,
    create_batch,
    get_batch,
    progress,
    record_finished,
)
from opsline.platform.engine.enqueue import JobSpec
from opsline.settings import Settings
from tests.platform.engine import sample_jobs
from tests.platform.engine.helpers import all_final, running_worker, wait_until


def _create(db: Database, specs: list[JobSpec], tenant: uuid.UUID) -> uuid.UUID:
    with db.unit_of_work() as uow:
        return create_batch(
            uow,
            specs,
            name="import",
            tenant_id=tenant,
            on_success="tests.callback",
            on_failure="tests.callback",
            on_complete="tests.callback",
            callback_args={"kind": "cb"},
        )


def _batch(db: Database, batch_id: uuid.UUID, tenant: uuid.UUID):  # type: ignore[no-untyped-def]
    with db.read() as session:
        return get_batch(session, batch_id, tenant)


def test_batch_counts_and_callbacks(db: Database, engine_settings: Settings) -> None:
    tenant = uuid.uuid4()
    specs = [JobSpec("tests.echo", {"value": n}, tenant_id=tenant) for n in range(5)]
    specs.append(JobSpec("tests.flaky", {"fail_times": 9, "key": "b"}, tenant_id=tenant))
    batch_id = _create(db, specs, tenant)
    with running_worker(db, engine_settings):
        wait_until(lambda: _batch(db, batch_id, tenant).finished_at is not None)
        wait_until(lambda: all_final(db))
    batch = _batch(db, batch_id, tenant)
    assert (batch.total, batch.succeeded, batch.failed, batch.cancelled) == (6, 5, 1, 0)
    assert progress(batch) == 1.0
    # on_failure and on_complete ran once each; on_success did not (a job died).
    assert sample_jobs.CALLS["callback"] == [("cb", batch_id), ("cb", batch_id)]


def test_last_two_jobs_finishing_together_fire_callbacks_once(db: Database) -> None:
    """Two workers ack the last two jobs of a batch in concurrent transactions."""
    tenant = uuid.uuid4()
    batch_id = _create(db, [JobSpec("tests.noop", tenant_id=tenant) for _ in range(2)], tenant)
    stores = [Store(db, f"w{i}", 30) for i in range(2)]
    claimed = [stores[i].cycle([], [("default", 1)], promote=False)[0] for i in range(2)]
    assert [len(c) for c in claimed] == [1, 1]
    barrier = threading.Barrier(2)

    def ack(i: int, job: ClaimedJob) -> None:
        barrier.wait()
        stores[i].cycle([Outcome(job, "succeeded")], [], promote=False)

    threads = [threading.Thread(target=ack, args=(i, claimed[i][0])) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batch = _batch(db, batch_id, tenant)
    assert (batch.succeeded, batch.finished_at is not None) == (2, True)
    callbacks = stores[0].cycle([], [("default", 10)], promote=False)[0]
    assert sorted(job.name for job in callbacks) == ["tests.callback", "tests.callback"]


def test_cancel_batch_cancels_pending_jobs_and_completes(db: Database) -> None:
    tenant = uuid.uuid4()
    batch_id = _create(db, [JobSpec("tests.noop", tenant_id=tenant) for _ in range(3)], tenant)
    with db.unit_of_work() as uow:
        assert cancel_batch(uow, batch_id, tenant) == 3
    batch = _batch(db, batch_id, tenant)
    assert (batch.cancelled, batch.cancel_requested, batch.finished_at is not None) == (
        3,
        True,
        True,
    )


def test_finishing_jobs_of_two_batches_locks_them_in_one_order(db: Database) -> None:
    """Two transactions finishing jobs of the same two batches, the counts given in
    opposite orders: the second waits for the first instead of deadlocking."""
    tenant = uuid.uuid4()
    low, high = sorted(_create(db, [JobSpec("tests.noop", tenant_id=tenant)], tenant) for _ in "ab")
    now = utcnow()
    failures: list[BaseException] = []

    def finish_high_first() -> None:
        try:
            with db.unit_of_work() as uow:
                record_finished(
                    uow.session, {high: BatchCounts(succeeded=1), low: BatchCounts(failed=1)}, now
                )
        except BaseException as exc:
            failures.append(exc)

    with hot_engine(db).begin() as first:
        record_finished(first, {low: BatchCounts(failed=1)}, now)  # holds the low row
        second = threading.Thread(target=finish_high_first)
        second.start()
        second.join(0.5)  # meanwhile waiting for the low row, holding nothing else
        record_finished(first, {high: BatchCounts(succeeded=1)}, now)
    second.join()
    assert failures == []
    for batch_id in (low, high):
        batch = _batch(db, batch_id, tenant)
        assert batch.succeeded + batch.failed == 2  # counted by both, one job's worth each


def test_empty_batch_completes_at_once(db: Database) -> None:
    tenant = uuid.uuid4()
    batch_id = _create(db, [], tenant)
    assert _batch(db, batch_id, tenant).finished_at is not None
