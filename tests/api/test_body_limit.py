"""The request body cap: 413 before a body too large is read or parsed."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from opsline.api.body_limit import BodyLimitMiddleware
from opsline.platform.runtime import Runtime
from opsline.settings import Settings, SettingsError, load_settings
from tests import _server
from tests.helpers import assert_problem, signup

DEFAULT_CAP = Settings.model_fields["max_request_bytes"].default
SMALL_CAP = 2048
SMALL = pytest.mark.parametrize("settings_overrides", [{"max_request_bytes": SMALL_CAP}])
JSON = {"Content-Type": "application/json"}


def _padded_json(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes (an order body the endpoint would refuse)."""
    frame = b'{"items":[],"pad":""}'
    return frame[:-2] + b"x" * (size - len(frame)) + frame[-2:]


def _chunks(total: int, size: int = 512) -> Iterator[bytes]:
    for start in range(0, total, size):
        yield b" " * min(size, total - start)


def _assert_too_large(response: Any, cap: int) -> None:
    body = assert_problem(response, 413)
    assert body["type"].endswith("/too-large")
    assert str(cap) in body["detail"] and "split" in body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]


def test_declared_length_over_the_cap_is_a_413_problem_with_request_id(
    app_client: TestClient,
) -> None:
    response = app_client.post(
        "/api/v1/orders", content=_padded_json(DEFAULT_CAP + 1), headers=JSON
    )
    _assert_too_large(response, DEFAULT_CAP)
    assert response.json()["instance"] == "/api/v1/orders"
    assert response.headers["connection"] == "close"


def test_body_of_exactly_the_cap_reaches_the_endpoint(app_client: TestClient) -> None:
    response = app_client.post("/api/v1/orders", content=_padded_json(DEFAULT_CAP), headers=JSON)
    assert_problem(response, 401)


def test_malformed_content_length_is_a_400(app_client: TestClient) -> None:
    for value in ("abc", "-5", "12, 13", "1e3"):
        response = app_client.post(
            "/api/v1/orders", content=b"{}", headers={**JSON, "Content-Length": value}
        )
        body = assert_problem(response, 400)
        assert "Content-Length" in body["detail"], value
        assert response.headers["x-request-id"]


@SMALL
def test_lowered_cap_applies_to_declared_lengths(app_client: TestClient) -> None:
    over = app_client.post("/api/v1/orders", content=_padded_json(SMALL_CAP + 1), headers=JSON)
    _assert_too_large(over, SMALL_CAP)
    under = app_client.post("/api/v1/orders", content=_padded_json(SMALL_CAP), headers=JSON)
    assert_problem(under, 401)


@SMALL
def test_declared_length_over_the_cap_is_refused_before_the_body_is_sent(
    runtime: Runtime,
) -> None:
    """A real server answers a 10 GB declaration at once, without waiting for any of it."""
    with _server.serve(runtime) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /api/v1/orders HTTP/1.1\r\nHost: test\r\n"
                b"Content-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n"
            )
            received = b""
            while b"\r\n\r\n" not in received:
                chunk = sock.recv(65536)
                assert chunk, received
                received += chunk
    head = received.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 413 "), head
    assert b"x-request-id: " in head
    assert b"content-type: application/problem+json" in head


@SMALL
def test_chunked_body_past_the_cap_is_a_413_from_a_real_server(runtime: Runtime) -> None:
    with _server.serve(runtime) as base, _server.client(base) as http:
        response = http.post("/api/v1/orders", content=_chunks(SMALL_CAP * 4), headers=JSON)
    _assert_too_large(response, SMALL_CAP)


@SMALL
def test_chunked_body_within_the_cap_reaches_the_endpoint(runtime: Runtime) -> None:
    body = _padded_json(SMALL_CAP)
    with _server.serve(runtime) as base, _server.client(base) as http:
        response = http.post("/api/v1/orders", content=iter([body[:1000], body[1000:]]))
    assert "content-length" not in response.request.headers
    assert_problem(response, 401)


@SMALL
def test_chunked_body_past_the_cap_is_a_413_in_process(app_client: TestClient) -> None:
    response = app_client.post("/api/v1/orders", content=_chunks(SMALL_CAP + 1), headers=JSON)
    _assert_too_large(response, SMALL_CAP)


@SMALL
def test_transfer_encoding_overrides_a_small_declared_length(app_client: TestClient) -> None:
    headers = {**JSON, "Content-Length": "10", "Transfer-Encoding": "chunked"}
    response = app_client.post("/api/v1/orders", content=_chunks(SMALL_CAP * 2), headers=headers)
    _assert_too_large(response, SMALL_CAP)


def test_largest_valid_bulk_request_is_accepted_under_the_default_cap(
    app_client: TestClient,
) -> None:
    """10,000 ids (the most a bulk request names) and a 1,000-value filter, indented."""
    owner = signup(app_client)
    request = {
        "resource": "products",
        "action": "archive",
        "where": [{"field": "name", "op": "in", "value": ["x" * 200] * 1000}],
        "ids": [str(uuid.uuid4()) for _ in range(10_000)],
    }
    content = json.dumps(request, indent=2).encode()
    assert 600_000 < len(content) < DEFAULT_CAP
    response = app_client.post(
        "/api/v1/bulk/preview", content=content, headers={**JSON, **owner.headers}
    )
    assert response.status_code == 200, response.text
    assert response.json()["count"] == 0


@pytest.mark.parametrize("settings_overrides", [{"max_request_bytes": 256}])
def test_websocket_messages_are_not_counted_against_the_cap(app_client: TestClient) -> None:
    token = signup(app_client).access_token
    with app_client.websocket_connect(f"/api/v1/orders/live/ws?access_token={token}") as ws:
        ws.send_text("x" * 1024)


def test_cap_must_be_positive() -> None:
    with pytest.raises(SettingsError, match="OPSLINE_MAX_REQUEST_BYTES"):
        load_settings(max_request_bytes=0)


def test_a_response_already_started_just_stops_when_the_body_passes_the_cap() -> None:
    """An app that answers while it reads (no Opsline endpoint does) gets no more body."""

    async def echo_while_reading(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while (await receive()).get("more_body"):
            await send({"type": "http.response.body", "body": b".", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    incoming = [{"type": "http.request", "body": b"x" * 10, "more_body": True}] * 5
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    asyncio.run(BodyLimitMiddleware(echo_while_reading, max_bytes=25)(scope, receive, send))
    assert [m.get("status") for m in sent] == [200, None, None]
    assert all(m.get("more_body") for m in sent[1:])
