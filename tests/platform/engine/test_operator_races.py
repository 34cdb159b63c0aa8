"""An operator's cancel or retry racing a worker's claim of the same job.

The operator's statement locks the job's row first, so on PostgreSQL (whose
READ COMMITTED would otherwise let the claim in between its read and its write)
as on SQLite (one writer) it acts on the state the claim left.
"""

from __future__ import annotations

import threading
import uuid

from sqlalchemy import func, select, update

from opsline.db import Database
from opsline.platform.engine._engines import hot_engine
from opsline.platform.engine.batches import create_batch, get_batch
from opsline.platform.engine.enqueue import JobSpec, enqueue
from opsline.platform.engine.errors import JobStateConflict
from opsline.platform.engine.models import jobs_table
from opsline.platform.engine.schemas import JobOut
from opsline.platform.engine.service import Scope, cancel_job, retry_job

J = jobs_table.c


def test_cancelling_a_job_a_worker_is_claiming_waits_and_flags_it_running(
    db: Database,
) -> None:
    """An operator's cancel racing a worker's claim of the same job: the cancel
    waits for the claim's transaction and, the job now running, only flags it;
    the batch counts no cancelled job."""
    tenant = uuid.uuid4()
    with db.unit_of_work() as uow:
        specs = [JobSpec("tests.noop", tenant_id=tenant) for _ in range(2)]
        batch_id = create_batch(uow, specs, name="import", tenant_id=tenant)
    with db.read() as session:
        job_id = session.execute(select(func.min(J.id)).where(J.batch_id == batch_id)).scalar_one()
    outcome: list[JobOut] = []
    with hot_engine(db).begin() as claim:  # a worker's claim, not yet committed
        claim.execute(
            update(jobs_table)
            .where(J.id == job_id)
            .values(state="running", attempt=1, lease_owner="racing-worker")
        )
        canceller = threading.Thread(
            target=lambda: outcome.append(cancel_job(db, Scope.operator(), job_id))
        )
        canceller.start()
        canceller.join(0.5)
        assert canceller.is_alive()  # waiting for the claim's transaction
    canceller.join()
    assert outcome[0].state == "running"
    with db.read() as session:
        flagged = session.execute(select(J.cancel_requested).where(J.id == job_id)).scalar_one()
    assert flagged is True
    with db.read() as session:
        batch = get_batch(session, batch_id, tenant)
    assert (batch.cancelled, batch.finished_at) == (0, None)


def test_retrying_a_job_a_worker_is_claiming_waits_and_refuses(db: Database) -> None:
    """A retry racing a worker's claim of the waiting job: the retry waits for the
    claim and refuses the now running job, rather than making it available again
    (a second worker would run it at the same time)."""
    job_id = enqueue(db, "tests.noop", delay=3600)  # scheduled: may be retried now
    errors: list[Exception] = []

    def retry() -> None:
        try:
            retry_job(db, Scope.operator(), job_id)
        except JobStateConflict as exc:
            errors.append(exc)

    with hot_engine(db).begin() as claim:
        claim.execute(
            update(jobs_table)
            .where(J.id == job_id)
            .values(state="running", attempt=1, lease_owner="racing-worker")
        )
        retrier = threading.Thread(target=retry)
        retrier.start()
        retrier.join(0.5)
        assert retrier.is_alive()
    retrier.join()
    assert len(errors) == 1 and "is running" in str(errors[0])
    with db.read() as session:
        state = session.execute(select(J.state, J.lease_owner).where(J.id == job_id)).one()
    assert tuple(state) == ("running", "racing-worker")
