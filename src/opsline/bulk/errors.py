"""Errors of bulk actions, each with its problem type and status."""

from __future__ import annotations

from opsline.platform.http.problems import Conflict, NotFound, TooManyRequests, Unprocessable


class RunNotFound(NotFound):
    type_slug = "bulk-run-not-found"
    title = "Bulk run not found"


class InvalidBulkRequest(Unprocessable):
    """Unknown resource, field, operator or action, or a value that breaks a rule."""

    type_slug = "bulk-invalid"


class ConfirmationRequired(Conflict):
    type_slug = "bulk-confirmation-required"
    title = "Confirmation required"


class ConfirmationUsed(Conflict):
    """The confirmation token already confirmed a run (named in ``run_id``)."""

    type_slug = "bulk-confirmation-used"
    title = "Confirmation token already used"


class RunStateConflict(Conflict):
    type_slug = "bulk-run-state"
    title = "Run is not in a state for this"


class BulkLimitExceeded(TooManyRequests):
    type_slug = "bulk-limit"
    title = "Bulk action limit reached"
