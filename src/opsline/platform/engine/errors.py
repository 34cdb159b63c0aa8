"""Errors of the engine: client errors carry a problem type; control-flow
exceptions (:class:`JobCancelled`, :class:`Retry`) are raised inside handlers."""

from __future__ import annotations

from opsline.platform.http.problems import Conflict, NotFound, Unprocessable


class UnknownJob(Unprocessable):
    """No job or listener is registered under this name."""

    type_slug = "unknown-job"
    title = "Unknown job"


class InvalidJobArgs(Unprocessable):
    """Arguments failed validation at enqueue time (never a dead job later)."""

    type_slug = "invalid-job-args"
    title = "Invalid job arguments"


class JobNotFound(NotFound):
    type_slug = "job-not-found"
    title = "Job not found"


class BatchNotFound(NotFound):
    type_slug = "batch-not-found"
    title = "Batch not found"


class JobStateConflict(Conflict):
    """The job is not in a state that allows this action (e.g. retry a running job)."""

    type_slug = "job-state-conflict"
    title = "Job state does not allow this"


class JobCancelled(Exception):
    """Raised by ``JobContext.check_cancelled()``; the worker marks the job cancelled."""


class JobTimeout(Exception):
    """Recorded as the error of an attempt that ran past the job's timeout."""


class WorkerLost(Exception):
    """Recorded as the error of an attempt whose worker stopped renewing its lease."""


class Retry(Exception):
    """Raise in a handler to retry after ``delay`` seconds without it counting as an error
    in the logs (it still uses an attempt)."""

    def __init__(self, delay: float | None = None, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.delay = delay
