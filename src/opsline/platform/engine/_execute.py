"""Running one claimed job in a worker thread and turning the result into an outcome.

What is retried: any exception from the handler (and an unknown job name,
e.g. a worker running older code) fails the attempt; the job is retried after
its policy's backoff until ``max_attempts``, then it is dead. ``Retry(delay)``
retries after ``delay``. ``JobCancelled`` (from ``ctx.check_cancelled()``)
ends the job as cancelled, without retry.
"""

from __future__ import annotations

import logging
import time
import traceback
from datetime import timedelta

import structlog

from opsline.db import utcnow
from opsline.platform.engine._store import ClaimedJob, Failure, Outcome
from opsline.platform.engine.context import JobContext
from opsline.platform.engine.errors import JobCancelled, Retry
from opsline.platform.engine.registry import JobDef, RetryPolicy, find_job
from opsline.platform.ratelimit import RateLimiter

log = structlog.get_logger("opsline.engine")
_debug = logging.getLogger("opsline.engine")


def execute(job: ClaimedJob, ctx: JobContext, limiter: RateLimiter | None = None) -> Outcome:
    started = time.perf_counter()
    definition = find_job(job.name)
    if definition is not None and definition.rate_limit and limiter is not None:
        deferred = _over_rate_limit(job, definition, limiter)
        if deferred is not None:
            return deferred
    try:
        if definition is None:
            raise LookupError(f"no job is registered as {job.name!r} in this worker")
        if _debug.isEnabledFor(logging.DEBUG):
            log.debug("job_started", **_fields(job))
        definition.run(ctx, job.args)
        if _debug.isEnabledFor(logging.DEBUG):
            log.debug("job_succeeded", **_fields(job))
    except JobCancelled:
        log.info("job_cancelled", **_fields(job))
        return Outcome(job, "cancelled", seconds=time.perf_counter() - started)
    except Retry as exc:
        failure = failure_for(job, exc, policy=None, delay=exc.delay)
        return Outcome(job, "failed", failure, time.perf_counter() - started)
    except Exception as exc:
        policy = definition.retry if definition is not None else RetryPolicy()
        failure = failure_for(job, exc, policy=policy)
        return Outcome(job, "failed", failure, time.perf_counter() - started)
    return Outcome(job, "succeeded", seconds=time.perf_counter() - started)


def _over_rate_limit(job: ClaimedJob, definition: JobDef, limiter: RateLimiter) -> Outcome | None:
    """Consume one unit of the job's rate limit; over it, defer to the window's reset."""
    assert definition.rate_limit is not None
    key = definition.rate_key(job.args) if definition.rate_key else None
    state = limiter.hit(definition.rate_limit, "job", definition.name, str(key or "-"))
    if state.allowed:
        return None
    log.info("job_rate_limited", retry_in=state.reset_after, **_fields(job))
    until = utcnow() + timedelta(seconds=max(1, state.reset_after))
    return Outcome(job, "deferred", defer_until=until)


def failure_for(
    job: ClaimedJob,
    exc: BaseException,
    *,
    policy: RetryPolicy | None,
    delay: float | None = None,
) -> Failure:
    """The recorded failure of this attempt; ``retry_at`` is None when it was the last."""
    if delay is None:
        delay = (policy or RetryPolicy()).delay(job.attempt)
    last = job.attempt >= job.max_attempts
    retry_at = None if last else utcnow() + timedelta(seconds=delay)
    tb = "".join(traceback.format_exception(exc))
    log.warning(
        "job_dead" if last else "job_failed",
        error=f"{type(exc).__name__}: {exc}",
        retry_in=None if last else round(delay, 3),
        **_fields(job),
    )
    return Failure(type(exc).__qualname__, str(exc)[:4000], tb[-20000:], retry_at)


def _fields(job: ClaimedJob) -> dict[str, object]:
    return {
        "job_id": job.id,
        "job": job.name,
        "queue": job.queue,
        "tenant_id": str(job.tenant_id) if job.tenant_id else None,
        "attempt": job.attempt,
    }
