"""Live order status over SSE and WebSocket, on private channels.

Both authenticate with the access token (``Authorization: Bearer`` or, for
browsers' EventSource and WebSocket, ``?access_token=``). A user gets their own
orders' changes; ``?scope=tenant`` (the whole tenant) and ``?user_id=`` of
another user need ``orders.read_all``, otherwise the channel is refused (403).
SSE resumes after ``Last-Event-ID`` from the order status log, so a dropped
connection loses nothing; pushes arrive through the engine's pub/sub after
commit, in one process or across processes (Redis, PostgreSQL NOTIFY).

The admission is not for ever: every ``live_heartbeat_seconds`` the session is
checked again as a REST request would check it (a logout, a removed member or a
deactivated user: 401; a role that lost the channel's permission: 403), and the
feed ends when the access token expires. SSE then sends a last ``event: end``
whose data is the problem document and closes; the WebSocket closes with 4401
or 4403 and the problem's detail as its reason. Clients reconnect with a fresh
token (and resume from the log). A WebSocket refused at its handshake gets the
problem as an HTTP response (401, 403, 429), as SSE does.

A principal holds at most ``live_max_streams_per_user`` feeds open at once in
one process: one more is a 429.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Header, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketState

from opsline.db import BIGINT_MAX
from opsline.orders._live import tenant_channel, user_channel
from opsline.orders.models import OrderStatusChange
from opsline.orders.permissions import ORDERS_READ, ORDERS_READ_ALL
from opsline.platform.context import Principal
from opsline.platform.engine.changes import pubsub_for
from opsline.platform.http.deps import principal_from_credentials
from opsline.platform.http.problems import (
    BadRequest,
    Forbidden,
    Problem,
    ServiceUnavailable,
    Unauthorized,
)
from opsline.platform.http.routing import Route
from opsline.platform.realtime import Subscription
from opsline.platform.realtime.readmission import Readmission
from opsline.platform.realtime.streams import refuse_handshake, sse_end
from opsline.platform.runtime import Runtime

router = APIRouter(tags=["orders"], route_class=Route)

POLL_SECONDS = 0.02
REPLAY_LIMIT = 1000
LOOKBACK = 256
Scope = Literal["mine", "tenant"]


@dataclass(frozen=True, slots=True)
class Feed:
    tenant_id: uuid.UUID
    user_id: uuid.UUID | None  # None: the whole tenant
    channel: str


def _feed(principal: Principal, scope: Scope, user_id: uuid.UUID | None) -> Feed:
    if not principal.has(ORDERS_READ.name):
        raise Forbidden(f"your role '{principal.role}' lacks the permission 'orders.read'")
    wants_other = scope == "tenant" or (user_id is not None and user_id != principal.user_id)
    if wants_other and not principal.has(ORDERS_READ_ALL.name):
        raise Forbidden("that channel is not yours; you may follow only your own orders")
    if scope == "tenant":
        return Feed(principal.tenant_id, None, tenant_channel(principal.tenant_id))
    target = user_id or principal.user_id
    if target is None:
        raise BadRequest("API keys follow ?scope=tenant or ?user_id=<id>")
    return Feed(principal.tenant_id, target, user_channel(principal.tenant_id, target))


def _admit(
    runtime: Runtime, token: str | None, scope: Scope, user_id: uuid.UUID | None
) -> Readmission[Feed]:
    """The admission of ``token`` to a feed (blocking: one read); 401 or 403 if refused."""
    if not token:
        raise Unauthorized("send an access token")
    principal = principal_from_credentials(runtime, token=token, api_key=None)
    return Readmission(runtime, principal, lambda p: _feed(p, scope, user_id), token=token)


def _log_after(runtime: Runtime, feed: Feed, after: int) -> list[dict[str, Any]]:
    C = OrderStatusChange
    stmt = select(C).where(C.tenant_id == feed.tenant_id, C.seq > after)
    if feed.user_id is not None:
        stmt = stmt.where(C.user_id == feed.user_id)
    with runtime.db.read() as session:
        rows = session.scalars(stmt.order_by(C.seq).limit(REPLAY_LIMIT)).all()
    return [
        {
            "seq": r.seq,
            "order_id": str(r.order_id),
            "status": r.status,
            "total": f"{r.total:.2f}",
            "currency": r.currency,
            "at": r.at.isoformat(),
        }
        for r in rows
    ]


def _high_water(runtime: Runtime, feed: Feed) -> int:
    C = OrderStatusChange
    stmt = select(func.max(C.seq)).where(C.tenant_id == feed.tenant_id)
    if feed.user_id is not None:
        stmt = stmt.where(C.user_id == feed.user_id)
    with runtime.db.read() as session:
        return int(session.scalar(stmt) or 0)


def _subscribe(runtime: Runtime, feed: Feed) -> Subscription:
    pubsub = pubsub_for(runtime.db.engine)
    if pubsub is None:
        raise ServiceUnavailable("live updates are not running in this process")
    return pubsub.subscribe(feed.channel)


class _Cursor:
    """What a feed delivered: every change once, read from the log in sequence order.

    A pub/sub message only says "look"; the log is the truth. Transactions can
    commit out of sequence order, so each look re-reads a window below the
    highest sequence seen and skips what was already delivered.
    """

    def __init__(self, floor: int) -> None:
        self.floor = floor
        self.top = floor
        self.seen: set[int] = set()

    def fresh(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = [row for row in rows if row["seq"] not in self.seen]
        for row in out:
            self.seen.add(row["seq"])
            self.top = max(self.top, row["seq"])
        if len(self.seen) > 4 * LOOKBACK:
            self.seen = {seq for seq in self.seen if seq > self.top - LOOKBACK}
        return out

    @property
    def window_start(self) -> int:
        return max(self.floor, self.top - LOOKBACK)


async def _messages(
    runtime: Runtime,
    admission: Readmission[Feed],
    after: int | None,
    gone: Callable[[], Awaitable[bool]],
) -> AsyncIterator[dict[str, Any] | None]:
    """Changes after ``after`` (or from now on), in order; None marks a heartbeat.

    Ends as soon as ``gone()`` says the client left, and raises the problem once
    the admission no longer holds (both checked at every poll). Each time the
    session is checked again the log is read too, so a push lost by the pub/sub
    (a reconnecting listener) is late by one interval at most.
    """
    feed = admission.granted
    subscription = await run_in_threadpool(_subscribe, runtime, feed)
    try:
        floor = after if after is not None else await run_in_threadpool(_high_water, runtime, feed)
        cursor = _Cursor(floor)
        look = after is not None
        idle = 0.0
        while True:
            if await admission.check():
                look = True
            if look:
                rows = await run_in_threadpool(_log_after, runtime, feed, cursor.window_start)
                fresh = cursor.fresh(rows)
                for row in fresh:
                    yield row
                if fresh:
                    idle = 0.0
                # A full page means more history is waiting: look again at once.
                look = len(rows) == REPLAY_LIMIT
            if subscription.get(timeout=0) is not None:
                look = True
                continue
            if await gone():
                return
            await asyncio.sleep(POLL_SECONDS)
            idle += POLL_SECONDS
            if idle >= runtime.settings.live_heartbeat_seconds:
                idle = 0.0
                yield None
    finally:
        subscription.close()


def _token(authorization: str | None, access_token: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:]
    return access_token


@router.get(
    "/orders/live/sse",
    summary="Server-sent events of order status changes (resume with Last-Event-ID)",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}},
        429: {"description": "The principal holds its limit of live streams open"},
    },
)
async def order_events(
    request: Request,
    scope: Scope = "mine",
    user_id: uuid.UUID | None = None,
    access_token: Annotated[str | None, Query(max_length=4096)] = None,
    authorization: Annotated[str | None, Header()] = None,
    last_event_id: Annotated[int | None, Header(alias="Last-Event-ID", ge=0, le=BIGINT_MAX)] = None,
) -> StreamingResponse:
    runtime: Runtime = request.app.state.runtime
    token = _token(authorization, access_token)
    admission = await run_in_threadpool(_admit, runtime, token, scope, user_id)
    admission.refuse_if_full()

    async def stream() -> AsyncIterator[bytes]:
        yield b"retry: 2000\n\n"
        # Taken here, not before the response: only a started stream is sure to
        # run its finally. Streams opened together may pass the check above and
        # find the slots taken: they end at once.
        if not admission.take_slot():
            yield sse_end(admission.too_many())
            return
        messages = _messages(runtime, admission, last_event_id, request.is_disconnected)
        try:
            async for message in messages:
                if message is None:
                    yield b": keep-alive\n\n"
                    continue
                data = orjson.dumps(message)
                yield b"id: %d\nevent: order.status\ndata: %s\n\n" % (message["seq"], data)
        except (Unauthorized, Forbidden) as problem:
            yield sse_end(problem)
        finally:
            admission.give_slot_back()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.websocket("/orders/live/ws")
async def order_socket(
    websocket: WebSocket,
    scope: Scope = "mine",
    user_id: uuid.UUID | None = None,
    access_token: str | None = None,
    after: Annotated[int | None, Query(ge=0, le=BIGINT_MAX)] = None,
) -> None:
    """WebSocket of order status changes; ``?after=<seq>`` replays from the log first."""
    runtime: Runtime = websocket.app.state.runtime
    try:
        token = _token(websocket.headers.get("authorization"), access_token)
        admission = await run_in_threadpool(_admit, runtime, token, scope, user_id)
    except Problem as exc:
        await refuse_handshake(websocket, exc)
        return
    if not admission.take_slot():
        await refuse_handshake(websocket, admission.too_many())
        return
    try:
        await websocket.accept()
        await _send_feed(websocket, runtime, admission, after)
    finally:
        admission.give_slot_back()


async def _send_feed(
    websocket: WebSocket, runtime: Runtime, admission: Readmission[Feed], after: int | None
) -> None:
    async def gone() -> bool:
        return websocket.client_state is not WebSocketState.CONNECTED

    try:
        async for message in _messages(runtime, admission, after, gone):
            await websocket.send_text(orjson.dumps(message or {"type": "heartbeat"}).decode())
    except WebSocketDisconnect:
        return
    except (Unauthorized, Forbidden) as problem:
        await websocket.close(code=4000 + problem.status, reason=problem.detail[:120])
