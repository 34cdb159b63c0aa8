"""Core statements of the worker's store (PostgreSQL; SQLite uses ``_sqlite_hot``
for the two hottest). Every statement on a running job carries ``FENCE``:
``lease_owner = :worker AND state = 'running'`` plus the claimed (id, attempt).
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import bindparam, func, or_, select, text, tuple_, union_all, update

from opsline.platform.engine.models import CLAIM_ORDER, in_claim_order, jobs_table, state_is

J = jobs_table.c
TS = J.run_at.type


@functools.cache
def claim_statement(queues: int = 1) -> Any:
    """Claim up to ``n_<i>`` jobs of queue ``b_queue_<i>`` for each of ``queues``
    queues, in one statement (one candidate CTE per queue, each skipping locked rows)."""
    running = jobs_table.alias("r")
    running_for_key = (
        select(func.count())
        .where(
            state_is(running.c.state, "running"),
            running.c.concurrency_key.is_not(None),
            running.c.concurrency_key == J.concurrency_key,
        )
        .scalar_subquery()
    )
    candidates = [
        select(J.id)
        .where(
            state_is(J.state, "available"),
            J.queue == bindparam(f"b_queue_{i}"),
            in_claim_order(J.priority),
            or_(J.concurrency_key.is_(None), running_for_key < J.concurrency_limit),
        )
        .order_by(J.priority, J.vtime, J.id)
        .limit(bindparam(f"n_{i}"))
        .with_for_update(skip_locked=True)
        .cte(f"candidates_{i}")
        for i in range(queues)
    ]
    chosen = (
        candidates[0]
        if queues == 1
        else union_all(*(select(c.c.id) for c in candidates)).subquery("chosen")
    )
    return (
        update(jobs_table)
        .where(J.id == chosen.c.id)
        .values(
            state="running",
            attempt=J.attempt + 1,
            attempted_at=bindparam("now", type_=TS),
            lease_owner=bindparam("worker"),
            lease_expires_at=bindparam("expires", type_=TS),
        )
        .returning(
            J.id,
            J.name,
            J.queue,
            J.tenant_id,
            J.args,
            J.attempt,
            J.max_attempts,
            J.batch_id,
            J.concurrency_key,
            J.priority,
            J.vtime,
        )
    )


FENCE = (J.lease_owner == bindparam("worker"), state_is(J.state, "running"))


# "id IN (...)" lets SQLite probe the primary key; the row values then fence the attempt.
PAIRS = (
    J.id.in_(bindparam("ids", expanding=True)),
    tuple_(J.id, J.attempt).in_(bindparam("pairs", expanding=True)),
)


def finish_statement(state: str) -> Any:
    return (
        update(jobs_table)
        .where(*FENCE, *PAIRS)
        .values(
            state=state,
            finished_at=bindparam("now", type_=TS),
            lease_owner=None,
            lease_expires_at=None,
        )
        .returning(J.id)
    )


SUCCEED = finish_statement("succeeded")
CANCEL = finish_statement("cancelled")
FAIL = (
    update(jobs_table)
    .where(*FENCE, J.id == bindparam("job_id"), J.attempt == bindparam("job_attempt"))
    .values(
        state=bindparam("new_state"),
        run_at=bindparam("retry_at", type_=TS),
        finished_at=bindparam("finished", type_=TS),
        last_error=bindparam("message"),
        lease_owner=None,
        lease_expires_at=None,
    )
)
HEARTBEAT = (
    update(jobs_table)
    .where(*FENCE, *PAIRS)
    .values(lease_expires_at=bindparam("expires", type_=TS))
    .returning(J.id, J.cancel_requested)
)
RELEASE = (
    update(jobs_table)
    .where(*FENCE, *PAIRS)
    .values(state="available", attempt=J.attempt - 1, lease_owner=None, lease_expires_at=None)
)
DEFER = (
    update(jobs_table)
    .where(*FENCE, J.id == bindparam("job_id"), J.attempt == bindparam("job_attempt"))
    .values(
        state="scheduled",
        run_at=bindparam("run_at", type_=TS),
        attempt=J.attempt - 1,
        lease_owner=None,
        lease_expires_at=None,
    )
)
PROMOTE = text(
    "UPDATE jobs SET state = 'available', vtime = coalesce((SELECT h.vtime FROM jobs h"
    f" WHERE h.state = 'available' AND h.queue = jobs.queue AND h.{CLAIM_ORDER}"
    " ORDER BY h.priority, h.vtime, h.id LIMIT 1), 0)"
    " WHERE state IN ('scheduled', 'retryable') AND run_at <= :now"
).bindparams(bindparam("now", type_=TS))
