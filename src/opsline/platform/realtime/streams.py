"""Open live streams per principal, counted in this process."""

from __future__ import annotations

import threading
from collections import Counter

import orjson
from starlette.websockets import WebSocket

from opsline.platform.http.problems import Problem, TooManyRequests


def too_many_streams(limit: int) -> TooManyRequests:
    """The 429 for one live stream more than ``limit``."""
    return TooManyRequests(
        f"you hold {limit} live streams open already; close one first",
        headers={"Retry-After": "5"},
    )


def sse_end(problem: Problem) -> bytes:
    """An SSE stream's last event: why it ends, as a problem document."""
    return b"event: end\ndata: %s\n\n" % orjson.dumps(problem.body())


async def refuse_handshake(websocket: WebSocket, problem: Problem) -> None:
    """Refuse a WebSocket before accepting it: with the problem as an HTTP response of
    its status (401, 403, 429, ...) where the server can send one (the WebSocket
    Denial Response extension; uvicorn's), else with the close code 4000 + status,
    which the client then sees as a bare 403."""
    if "websocket.http.response" not in websocket.scope.get("extensions", {}):
        await websocket.close(code=4000 + problem.status, reason=problem.detail[:120])
        return
    await websocket.send_denial_response(problem.response(websocket))


class StreamSlots:
    """How many live streams each subject (``user:<id>``, ``apikey:<id>``) holds open.

    The count is this process's only: behind a load balancer with several server
    processes a subject may hold the limit in each of them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: Counter[str] = Counter()

    def full(self, subject: str, limit: int) -> bool:
        with self._lock:
            return self._open[subject] >= limit

    def take(self, subject: str, limit: int) -> bool:
        """Hold one more stream for ``subject``; False if it holds ``limit`` already.

        Every successful take is matched by one :meth:`give_back`.
        """
        with self._lock:
            if self._open[subject] >= limit:
                return False
            self._open[subject] += 1
            return True

    def give_back(self, subject: str) -> None:
        with self._lock:
            self._open[subject] -= 1
            if self._open[subject] <= 0:
                del self._open[subject]
