"""Live order status: SSE and WebSocket deliver after commit, privately, and resume."""

from __future__ import annotations

import json
import logging
import queue
import time
import uuid
from contextlib import ExitStack
from datetime import timedelta
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from opsline.platform.auth.tokens import TokenSigner
from opsline.platform.realtime.pubsub import PG_CHANNEL
from tests._sse import sse, statuses_until
from tests.helpers import PASSWORD
from tests.orders.conftest import Live

pytestmark = pytest.mark.slow


SETTINGS: dict[str, object] = {
    "payment_latency_min_ms": 50,
    "payment_latency_max_ms": 60,
    "payment_success_rate": 1.0,
    "embedded_workers": 2,
    "embedded_scheduler": False,
    "live_heartbeat_seconds": 0.2,
    "live_max_streams_per_user": 3,
}


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return SETTINGS


def test_sse_delivers_my_order_to_paid_and_nothing_to_others(live: Live) -> None:
    product = live.product("LIVE", stock=5)
    with sse(live.base, live.member) as mine, sse(live.base, live.owner) as owners_own:
        order = live.order([(product, 1)], key="live-1").json()
        assert statuses_until(mine, "PAID") == ["PENDING", "PROCESSING", "PAID"]
        time.sleep(0.3)
        assert owners_own.empty()  # the owner follows only their own orders here
    assert order["status"] == "PENDING"


def test_sse_resumes_after_last_event_id(live: Live) -> None:
    product = live.product("RESUME", stock=5)
    with sse(live.base, live.member) as events:
        live.order([(product, 1)], key="resume-1")
        statuses_until(events, "PAID")
    # Offline meanwhile: a second order goes all the way to PAID.
    with sse(live.base, live.member) as probe:
        live.order([(product, 1)], key="resume-2")
        last = [probe.get(timeout=20) for _ in range(3)]
    first_seq = last[0]["id"] - 1
    with sse(live.base, {**live.member, "Last-Event-ID": str(first_seq)}) as resumed:
        replay = [resumed.get(timeout=10) for _ in range(3)]
    assert [e["id"] for e in replay] == [e["id"] for e in last]
    assert [e["data"]["status"] for e in replay] == ["PENDING", "PROCESSING", "PAID"]


def test_resume_positions_beyond_bigint_are_refused(live: Live) -> None:
    too_far = str(2**63)
    refused = live.http.get(
        "/api/v1/orders/live/sse", headers={**live.member, "Last-Event-ID": too_far}
    )
    assert refused.status_code == 422 and "Last-Event-ID" in refused.text
    token = live.member["Authorization"].removeprefix("Bearer ")
    url = live.base.replace("http", "ws") + "/api/v1/orders/live/ws"
    with pytest.raises((InvalidStatus, ConnectionClosed)):
        with connect(f"{url}?access_token={token}&after={too_far}") as socket:
            socket.recv(timeout=5)


def test_someone_elses_channel_is_refused(live: Live) -> None:
    owner_me = live.http.get("/api/v1/me", headers=live.owner).json()
    refused = live.http.get(
        "/api/v1/orders/live/sse",
        params={"user_id": owner_me["user"]["id"]},
        headers=live.member,
    )
    assert refused.status_code == 403
    tenant_wide = live.http.get(
        "/api/v1/orders/live/sse", params={"scope": "tenant"}, headers=live.member
    )
    assert tenant_wide.status_code == 403
    anonymous = live.http.get("/api/v1/orders/live/sse")
    assert anonymous.status_code == 401


def test_websocket_delivers_status_changes(live: Live) -> None:
    product = live.product("WS", stock=5)
    token = live.member["Authorization"].removeprefix("Bearer ")
    url = live.base.replace("http", "ws") + f"/api/v1/orders/live/ws?access_token={token}"
    with connect(url) as socket:
        time.sleep(0.2)
        live.order([(product, 1)], key="ws-1")
        seen: list[str] = []
        while "PAID" not in seen:
            message = json.loads(socket.recv(timeout=20))
            if "status" in message:
                seen.append(message["status"])
    assert seen == ["PENDING", "PROCESSING", "PAID"]


def _refused_at_handshake(live: Live, query: str, headers: dict[str, str] | None = None) -> int:
    """The HTTP status a WebSocket handshake is refused with (it must be refused), its
    body the problem document, as an SSE request's would be."""
    url = live.base.replace("http", "ws") + f"/api/v1/orders/live/ws?{query}"
    with pytest.raises(InvalidStatus) as refused:
        with connect(url, additional_headers=headers) as socket:
            socket.recv(timeout=5)
    response = refused.value.response
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = json.loads(response.body)
    assert problem["status"] == response.status_code and problem["detail"]
    assert problem["request_id"] == response.headers["X-Request-ID"]
    return response.status_code


def _ws_count(live: Live, status: int) -> float:
    metrics = live.http.get("/metrics").text
    label = f'method="WS",route="/api/v1/orders/live/ws",status="{status}"'
    found = [
        line for line in metrics.splitlines() if line.startswith("opsline_http_requests_total{")
    ]
    return sum(float(line.rsplit(" ", 1)[1]) for line in found if label in line)


def test_websocket_connections_are_counted_with_their_status(live: Live) -> None:
    """An accepted feed is a 101 and a refused one its refusal, not a 500."""
    before = {status: _ws_count(live, status) for status in (101, 401, 500)}
    assert _refused_at_handshake(live, "access_token=not-a-token") == 401
    with _socket(live, live.member) as socket:
        socket.recv(timeout=5)  # a heartbeat: the feed is open
    deadline = time.monotonic() + 5
    while _ws_count(live, 101) == before[101]:  # counted when the socket has closed
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert _ws_count(live, 101) == before[101] + 1
    assert _ws_count(live, 401) == before[401] + 1
    assert _ws_count(live, 500) == before[500]


def test_a_refused_websocket_is_no_server_error_in_the_log(
    live: Live, caplog: pytest.LogCaptureFixture
) -> None:
    # uvicorn's own protocol logs a refusal as an incomplete handshake at ERROR.
    refused = _ws_count(live, 401)
    with caplog.at_level(logging.ERROR, logger="uvicorn.error"):
        assert _refused_at_handshake(live, "access_token=not-a-token") == 401
        deadline = time.monotonic() + 5
        while _ws_count(live, 401) == refused:  # counted as the app returns
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.2)  # the server would log right after
    assert [r.getMessage() for r in caplog.records if r.name == "uvicorn.error"] == []


def test_websocket_refuses_bad_tokens_and_foreign_channels(live: Live) -> None:
    # Refused before it is accepted, with the problem as an HTTP response
    # (the 4401/4403 close codes are for feeds already open).
    assert _refused_at_handshake(live, "access_token=not-a-token") == 401
    assert _refused_at_handshake(live, "") == 401
    token = live.member["Authorization"].removeprefix("Bearer ")
    assert _refused_at_handshake(live, f"access_token={token}&scope=tenant") == 403
    owner_id = live.http.get("/api/v1/me", headers=live.owner).json()["user"]["id"]
    assert _refused_at_handshake(live, f"access_token={token}&user_id={owner_id}") == 403


def _drain(socket: ClientConnection, seconds: float) -> list[dict[str, Any]]:
    """Every message other than heartbeats the socket receives in ``seconds``."""
    received: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            message = json.loads(socket.recv(timeout=remaining))
        except TimeoutError:
            break
        if message != {"type": "heartbeat"}:
            received.append(message)
    return received


def _follow_to_paid(socket: ClientConnection) -> list[str]:
    seen: list[str] = []
    while "PAID" not in seen:
        message = json.loads(socket.recv(timeout=20))
        if "status" in message:
            seen.append(message["status"])
    return seen


def test_websocket_another_member_of_my_tenant_receives_nothing_of_my_order(
    live: Live,
) -> None:
    product = live.product("WS-PRIVATE", stock=5)
    other, _ = live.join("member")
    with _socket(live, live.member) as mine, _socket(live, other) as theirs:
        time.sleep(0.2)
        live.order([(product, 1)], key="ws-private-1")
        assert _follow_to_paid(mine) == ["PENDING", "PROCESSING", "PAID"]
        assert _drain(theirs, 0.5) == []
    # Nor from the log: replaying everything from the start gives them nothing, me all.
    with _socket(live, other, "&after=0") as theirs, _socket(live, live.member, "&after=0") as mine:
        assert _drain(theirs, 0.5) == []
        assert [m["status"] for m in _drain(mine, 0.1)] == ["PENDING", "PROCESSING", "PAID"]


def test_websocket_another_tenant_cannot_follow_this_tenants_orders(live: Live) -> None:
    product = live.product("WS-TENANT", stock=5)
    member_id = live.http.get("/api/v1/me", headers=live.member).json()["user"]["id"]
    email = f"elsewhere-{uuid.uuid4().hex[:8]}@example.com"
    signed = live.http.post(
        "/api/v1/auth/signup",
        json={"email": email, "password": PASSWORD, "tenant_name": "Elsewhere"},
    ).json()
    stranger = {"Authorization": f"Bearer {signed['tokens']['access_token']}"}
    # Their owner may follow their whole tenant or any user id, but only within
    # their own tenant: naming our member reaches nothing of ours.
    with ExitStack() as stack:
        mine = stack.enter_context(_socket(live, live.member))
        theirs = [
            stack.enter_context(_socket(live, stranger, query))
            for query in ("&scope=tenant", f"&user_id={member_id}")
        ]
        time.sleep(0.2)
        order = live.order([(product, 1)], key="ws-tenant-1").json()
        assert _follow_to_paid(mine) == ["PENDING", "PROCESSING", "PAID"]
        for socket in theirs:
            assert _drain(socket, 0.3) == []
    # Nor from the log (at most 3 feeds a principal: the two above may still count).
    with _socket(live, stranger, f"&user_id={member_id}&after=0") as replayed:
        assert _drain(replayed, 0.5) == []
    assert order["status"] == "PENDING"


def _ended_with(events: queue.Queue[dict[str, Any]], timeout: float = 5) -> dict[str, Any]:
    """The problem document the server ended an SSE stream with (the stream then closed)."""
    ended = events.get(timeout=timeout)
    assert ended.get("event") == "end", ended
    assert events.get(timeout=5) == {"closed": True}
    problem: dict[str, Any] = ended["data"]
    return problem


def _socket(live: Live, headers: dict[str, str], query: str = "") -> ClientConnection:
    token = headers["Authorization"].removeprefix("Bearer ")
    url = live.base.replace("http", "ws") + "/api/v1/orders/live/ws"
    return connect(f"{url}?access_token={token}{query}")


def _closed_with(socket: ClientConnection, timeout: float = 5) -> tuple[int, str]:
    """The close code and reason the server ended a WebSocket with (heartbeats skipped)."""
    with pytest.raises(ConnectionClosed) as closed:
        _read_for(socket, timeout)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


def _read_for(socket: ClientConnection, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        socket.recv(timeout=max(0.0, deadline - time.monotonic()))


def test_removing_a_manager_ends_their_tenant_stream(live: Live) -> None:
    manager, manager_id = live.join("manager")
    with sse(live.base, manager, scope="tenant") as events:
        removed = live.http.delete(f"/api/v1/members/{manager_id}", headers=live.owner)
        assert removed.status_code == 204
        problem = _ended_with(events)
    assert problem["status"] == 401
    assert live.http.get("/api/v1/orders", headers=manager).status_code == 401


def test_removing_a_manager_closes_their_websocket_with_4401(live: Live) -> None:
    manager, manager_id = live.join("manager")
    with _socket(live, manager, "&scope=tenant") as socket:
        assert json.loads(socket.recv(timeout=5)) == {"type": "heartbeat"}
        removed = live.http.delete(f"/api/v1/members/{manager_id}", headers=live.owner)
        assert removed.status_code == 204
        code, reason = _closed_with(socket)
    assert code == 4401 and "log in again" in reason


def test_a_manager_made_member_loses_the_tenant_stream_but_keeps_their_own(live: Live) -> None:
    manager, manager_id = live.join("manager")
    with sse(live.base, manager, scope="tenant") as tenant, sse(live.base, manager) as own:
        changed = live.http.patch(
            f"/api/v1/members/{manager_id}", json={"role": "member"}, headers=live.owner
        )
        assert changed.status_code == 200
        assert _ended_with(tenant)["status"] == 403
        product = live.product("DEMOTED", stock=5)
        live.order([(product, 1)], key="demoted-1", headers=manager)
        assert statuses_until(own, "PAID") == ["PENDING", "PROCESSING", "PAID"]


def test_the_stream_ends_when_its_access_token_expires(live: Live) -> None:
    member_token = live.member["Authorization"].removeprefix("Bearer ")
    claims = live.runtime.tokens.verify(member_token)
    signer = TokenSigner(live.runtime.settings)
    signer.lifetime = timedelta(seconds=3)  # the setting counts whole minutes
    short = signer.issue(
        user_id=claims.user_id, tenant_id=claims.tenant_id, session_id=claims.session_id
    )
    opened = time.monotonic()
    with sse(live.base, {"Authorization": f"Bearer {short}"}) as events:
        problem = _ended_with(events, timeout=10)
    assert time.monotonic() - opened > 1.5  # it streamed until then
    assert problem["status"] == 401 and "expired" in problem["detail"]
    assert _refused_at_handshake(live, "", {"Authorization": f"Bearer {short}"}) == 401


def _admitted(live: Live, headers: dict[str, str]) -> int:
    """The status an SSE request is answered with (the stream, if any, left at once)."""
    with live.http.stream("GET", "/api/v1/orders/live/sse", headers=headers) as response:
        return response.status_code


def test_a_stream_beyond_the_principals_cap_is_429_until_one_closes(live: Live) -> None:
    with ExitStack() as streams:
        for _ in range(3):
            streams.enter_context(sse(live.base, live.member))
        with live.http.stream("GET", "/api/v1/orders/live/sse", headers=live.member) as refused:
            assert refused.status_code == 429  # before reading: a stream would never end
            problem = json.loads(refused.read())
        assert problem["status"] == 429 and "Retry-After" in refused.headers
        assert _refused_at_handshake(live, "", live.member) == 429
        assert _admitted(live, live.owner) == 200  # the cap is per principal
    deadline = time.monotonic() + 5
    while _admitted(live, live.member) != 200:  # until the server saw the streams go
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _realtime_listeners(live: Live) -> int:
    with live.runtime.db.engine.connect() as conn:
        count = conn.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query ILIKE %(listen)s",
            {"listen": f"LISTEN {PG_CHANNEL}"},
        ).scalar()
    return int(count or 0)


@pytest.mark.parametrize("settings_overrides", [{**SETTINGS, "live_max_streams_per_user": 20}])
def test_twenty_streams_share_one_listen_connection(live: Live) -> None:
    if live.runtime.settings.is_sqlite:
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    product = live.product("MANY", stock=5)
    with ExitStack() as stack:
        streams = [stack.enter_context(sse(live.base, live.member)) for _ in range(20)]
        assert _realtime_listeners(live) == 1
        live.order([(product, 1)], key="many-1")
        for events in streams:
            assert statuses_until(events, "PAID") == ["PENDING", "PROCESSING", "PAID"]


@pytest.mark.redis
class TestThroughRedis:
    """With Redis the status goes out over Redis pub/sub; on PostgreSQL the orders, the
    embedded workers' units and their publishes run on the server's loop, awaited."""

    @pytest.fixture
    def settings_overrides(self, redis_url: str) -> dict[str, object]:
        return {**SETTINGS, "redis_url": redis_url, "orders_redis_lock": True}

    def test_sse_and_websocket_deliver_my_order_to_paid(self, live: Live) -> None:
        product = live.product("REDIS", stock=5)
        token = live.member["Authorization"].removeprefix("Bearer ")
        url = live.base.replace("http", "ws") + f"/api/v1/orders/live/ws?access_token={token}"
        with sse(live.base, live.member) as mine, connect(url) as socket:
            time.sleep(0.2)
            order = live.order([(product, 1)], key="redis-1").json()
            assert statuses_until(mine, "PAID") == ["PENDING", "PROCESSING", "PAID"]
            received: list[dict[str, Any]] = []
            while not received or received[-1]["status"] != "PAID":
                message = json.loads(socket.recv(timeout=20))
                if "status" in message:
                    received.append(message)
        assert [m["status"] for m in received] == ["PENDING", "PROCESSING", "PAID"]
        assert {m["order_id"] for m in received} == {order["id"]}
        assert live.stock(product) == 4
