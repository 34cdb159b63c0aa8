"""A live stream's admission, checked again while it streams (order feeds, bulk progress)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from starlette.concurrency import run_in_threadpool

from opsline.db import utcnow
from opsline.platform.context import Principal
from opsline.platform.http.deps import principal_from_credentials
from opsline.platform.http.problems import Forbidden, TooManyRequests, Unauthorized
from opsline.platform.realtime.streams import too_many_streams
from opsline.platform.runtime import Runtime

T = TypeVar("T")


class Readmission(Generic[T]):
    """A live stream's admission, asked again while it streams.

    ``grant`` says what the principal may follow (a channel, say), raising
    :class:`Forbidden` if nothing; what it granted at first is :attr:`granted`.
    :meth:`check`, called at every poll, costs a clock read, except every
    ``live_heartbeat_seconds`` when the credentials are checked again as a REST
    request would check them (one read, in the thread pool) and ``grant`` asked
    again. It raises :class:`Unauthorized` once the session ended (a logout, a
    removed member, a deactivated user, a revoked API key) or the access token
    expired, :class:`Forbidden` once the grant is no longer the same. The
    stream then ends with the problem: ``event: end`` (:func:`sse_end`), or a
    WebSocket close with 4401/4403.
    """

    def __init__(
        self,
        runtime: Runtime,
        principal: Principal,
        grant: Callable[[Principal], T],
        *,
        token: str | None,
        api_key: str | None = None,
    ) -> None:
        self._runtime, self._token, self._api_key, self._grant = runtime, token, api_key, grant
        self.subject = principal.subject
        self.granted = grant(principal)
        expires_at = runtime.tokens.verify(token).expires_at if token else None
        left = (expires_at - utcnow()).total_seconds() if expires_at else math.inf
        self._expires = time.monotonic() + left
        self._interval = runtime.settings.live_heartbeat_seconds
        self._next_check = time.monotonic() + self._interval

    async def check(self) -> bool:
        """Raise if the stream must end; True when the credentials were just checked again."""
        now = time.monotonic()
        if now >= self._expires:
            raise Unauthorized("access token expired; reconnect with a fresh one")
        if now < self._next_check:
            return False
        await run_in_threadpool(self._again)
        self._next_check = time.monotonic() + self._interval
        return True

    def _again(self) -> None:
        principal = principal_from_credentials(
            self._runtime, token=self._token, api_key=self._api_key
        )
        if self._grant(principal) != self.granted:
            raise Forbidden("that stream is no longer yours")

    def take_slot(self) -> bool:
        """Hold one of the principal's live streams; False when all are taken."""
        limit = self._runtime.settings.live_max_streams_per_user
        return self._runtime.live_streams.take(self.subject, limit)

    def give_slot_back(self) -> None:
        self._runtime.live_streams.give_back(self.subject)

    def refuse_if_full(self) -> None:
        """The 429 now, before a stream starts, if the principal holds all its slots."""
        limit = self._runtime.settings.live_max_streams_per_user
        if self._runtime.live_streams.full(self.subject, limit):
            raise self.too_many()

    def too_many(self) -> TooManyRequests:
        """The 429 of a stream that found no slot (an SSE's last event, a WebSocket's close)."""
        return too_many_streams(self._runtime.settings.live_max_streams_per_user)
