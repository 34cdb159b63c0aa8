"""The HTTP side of idempotent requests: the ``Idempotency-Key`` header and the
answer built from an :class:`~opsline.platform.idempotency.service.Outcome`."""

from __future__ import annotations

from fastapi import Header, Response
from fastapi.responses import ORJSONResponse

from opsline.platform.http.problems import PROBLEM_JSON
from opsline.platform.idempotency.service import Outcome

REPLAY_HEADER = "Idempotent-Replayed"


def key_header(description: str) -> object:
    """An ``Idempotency-Key`` request header (at most 255 characters) so described."""
    return Header(alias="Idempotency-Key", max_length=255, description=description)


def outcome_response(outcome: Outcome, response: Response) -> Response:
    """The outcome as first answered (or replayed, marked so), with the headers the
    dependencies set on ``response`` (a rate limit's)."""
    headers = dict(response.headers)
    if outcome.replayed:
        headers[REPLAY_HEADER] = "true"
    media = PROBLEM_JSON if outcome.status >= 400 else "application/json"
    return ORJSONResponse(
        outcome.body, status_code=outcome.status, headers=headers, media_type=media
    )
