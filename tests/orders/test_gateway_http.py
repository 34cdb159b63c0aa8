"""The HTTP payment gateway against a real payment service on loopback, no mocks."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from opsline.orders.gateway import (
    ChargeOutcome,
    ChargeResult,
    CircuitBreaker,
    CircuitOpen,
    GatewayUnavailable,
    HttpGateway,
    SimulatedGateway,
    gateway_for,
)
from opsline.settings import Settings, SettingsError, load_settings
from tests.orders.conftest import Shop, wait_for

AMOUNT = {"amount": Decimal("9.9"), "currency": "EUR"}
TOKEN = "sk-live-0123456789abcdef"
APPROVED = (200, {"status": "succeeded", "detail": "captured"})


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class PaymentService:
    """A partner's payment service: answers every POST with ``reply`` after ``delay`` s.

    ``reply`` is a status and a JSON document, or raw bytes sent as they are.
    """

    url: str = ""
    reply: tuple[int, object] = APPROVED
    delay: float = 0.0
    requests: list[Request] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)


class _Server(ThreadingHTTPServer):
    service: PaymentService

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that timed out hung up before the answer: expected here


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        service = self.server.service
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        headers = {name.lower(): value for name, value in self.headers.items()}
        service.requests.append(Request(self.path, headers, body))
        if service.delay:
            service.stopping.wait(service.delay)
        status, payload = service.reply
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if 300 <= status < 400:
            self.send_header("Location", "/elsewhere")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def service() -> Iterator[PaymentService]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.service = PaymentService(url=f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server.service
    server.service.stopping.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def gateway(service: PaymentService) -> Iterator[HttpGateway]:
    client = HttpGateway(service.url, token=SecretStr(TOKEN), timeout_s=0.3)
    yield client
    client.close()


def test_an_approved_charge_succeeds_and_follows_the_contract(
    service: PaymentService, gateway: HttpGateway
) -> None:
    result = gateway.charge(reference="order-1", **AMOUNT)
    assert result == ChargeResult(ChargeOutcome.SUCCEEDED, "captured")
    [request] = service.requests
    assert request.path == "/charges"
    assert request.body == {"reference": "order-1", "amount": "9.90", "currency": "EUR"}
    assert request.headers["idempotency-key"] == "order-1"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("opsline/")


def test_a_declined_answer_is_a_decline_with_its_detail(
    service: PaymentService, gateway: HttpGateway
) -> None:
    service.reply = (200, {"status": "declined", "detail": "card expired"})
    assert gateway.charge(reference="order-1", **AMOUNT) == ChargeResult(
        ChargeOutcome.DECLINED, "card expired"
    )


@pytest.mark.parametrize(
    ("payload", "detail"),
    [({"detail": "insufficient funds"}, "insufficient funds"), (b"no", "declined: HTTP 402")],
)
def test_a_402_is_a_decline_with_the_body_s_detail_or_the_status(
    service: PaymentService, gateway: HttpGateway, payload: object, detail: str
) -> None:
    service.reply = (402, payload)
    assert gateway.charge(reference="order-1", **AMOUNT) == ChargeResult(
        ChargeOutcome.DECLINED, detail
    )


@pytest.mark.parametrize(
    ("status", "payload"),
    [
        (500, {"error": "boom"}),
        (503, b"<html>maintenance</html>"),
        (401, {"error": "bad token"}),
        (403, {"error": "forbidden"}),
        (408, b""),
        (429, {"error": "slow down"}),
        (404, {"error": "no such route"}),
        (302, b""),
        (200, b"<html>a login page</html>"),
        (200, {"status": "pending"}),
    ],
)
def test_any_other_answer_is_unavailable_never_a_decline(
    service: PaymentService, gateway: HttpGateway, status: int, payload: object
) -> None:
    service.reply = (status, payload)
    with pytest.raises(GatewayUnavailable, match=f"HTTP {status}") as caught:
        gateway.charge(reference="order-1", **AMOUNT)
    assert len(str(caught.value)) < 300
    assert [r.path for r in service.requests] == ["/charges"]  # no redirect followed


def test_a_slow_service_times_out_as_unavailable(
    service: PaymentService, gateway: HttpGateway
) -> None:
    service.delay = 2.0
    with pytest.raises(GatewayUnavailable, match="timed out"):
        gateway.charge(reference="order-1", **AMOUNT)


def test_a_service_that_is_not_listening_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = HttpGateway(f"http://127.0.0.1:{port}", timeout_s=1)
    with pytest.raises(GatewayUnavailable, match="ConnectError"):
        client.charge(reference="order-1", **AMOUNT)
    client.close()


@pytest.mark.parametrize("failure", ["500", "timeout"])
def test_the_breaker_opens_after_threshold_failures_and_stops_calling(
    service: PaymentService, gateway: HttpGateway, failure: str
) -> None:
    if failure == "500":
        service.reply = (500, {"error": "boom"})
    else:
        service.delay = 2.0
    breaker = CircuitBreaker(gateway, threshold=2, reset_after=60)
    for n in range(breaker.threshold):
        with pytest.raises(GatewayUnavailable):
            breaker.charge(reference=f"order-{n}", **AMOUNT)
    assert breaker.is_open
    with pytest.raises(CircuitOpen):
        breaker.charge(reference="order-9", **AMOUNT)
    assert len(service.requests) == breaker.threshold


def test_a_reference_charged_twice_sends_the_same_idempotency_key(
    service: PaymentService, gateway: HttpGateway
) -> None:
    first = gateway.charge(reference="order-7", **AMOUNT)
    assert gateway.charge(reference="order-7", **AMOUNT) == first
    assert [r.headers["idempotency-key"] for r in service.requests] == ["order-7", "order-7"]


def test_a_refund_sends_its_own_idempotency_key(
    service: PaymentService, gateway: HttpGateway
) -> None:
    service.reply = (201, b"")
    gateway.refund(reference="order-7", **AMOUNT)
    [request] = service.requests
    assert request.path == "/refunds"
    assert request.headers["idempotency-key"] == "refund-order-7"
    assert request.body == {"reference": "order-7", "amount": "9.90", "currency": "EUR"}
    service.reply = (409, {"error": "no such charge"})
    with pytest.raises(GatewayUnavailable, match="HTTP 409"):
        gateway.refund(reference="order-7", **AMOUNT)


def _http_settings(tmp_path: Path, url: str, **extra: object) -> Settings:
    return load_settings(
        var_dir=tmp_path,
        payment_gateway="http",
        payment_gateway_url=url,
        payment_gateway_token=TOKEN,
        **extra,
    )


def test_the_token_is_sent_as_bearer_and_never_shown(
    service: PaymentService, tmp_path: Path
) -> None:
    settings = _http_settings(tmp_path, service.url)
    breaker = gateway_for(settings)
    assert isinstance(breaker.gateway, HttpGateway)
    # A misconfigured service that echoes what it was sent, the credentials included.
    service.reply = (401, {"error": "bad credentials", "got": f"Bearer {TOKEN}"})
    with pytest.raises(GatewayUnavailable) as caught:
        breaker.charge(reference="order-1", **AMOUNT)
    assert service.requests[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert "HTTP 401" in str(caught.value)
    for shown in (str(caught.value), repr(settings), str(settings.model_dump()), repr(breaker)):
        assert TOKEN not in shown


def test_one_breaker_per_configuration(service: PaymentService, tmp_path: Path) -> None:
    settings = _http_settings(tmp_path, service.url)
    assert gateway_for(settings) is gateway_for(_http_settings(tmp_path, service.url + "/"))
    slower = _http_settings(tmp_path, service.url, payment_gateway_timeout_s=20)
    assert gateway_for(slower) is not gateway_for(settings)
    assert isinstance(gateway_for(Settings(var_dir=tmp_path)).gateway, SimulatedGateway)


def test_the_http_gateway_needs_its_url() -> None:
    with pytest.raises(SettingsError, match="OPSLINE_PAYMENT_GATEWAY_URL"):
        load_settings(payment_gateway="http", payment_gateway_token=TOKEN)


@pytest.mark.parametrize(
    "url", ["ftp://pay.example.com", "pay.example.com", "https://user:pw@pay.example.com"]
)
def test_the_gateway_url_must_be_a_plain_http_url(url: str) -> None:
    with pytest.raises(SettingsError, match="OPSLINE_PAYMENT_GATEWAY_URL") as caught:
        load_settings(payment_gateway="http", payment_gateway_url=url)
    assert "pw" not in str(caught.value)


class TestThroughTheEngine:
    """An order placed over the API, paid by a real worker through the HTTP gateway."""

    @pytest.fixture
    def settings_overrides(
        self, settings_overrides: dict[str, object], service: PaymentService
    ) -> dict[str, object]:
        return {
            **settings_overrides,
            "payment_gateway": "http",
            "payment_gateway_url": service.url,
            "payment_gateway_timeout_s": 5,
        }

    def _settle(self, shop: Shop, stock: int, quantity: int) -> tuple[dict[str, Any], int]:
        product = shop.product(stock=stock)
        order = shop.order([(product["id"], quantity)]).json()
        url = f"/api/v1/orders/{order['id']}"
        settled = wait_for(
            lambda: (
                body
                if (body := shop.client.get(url, headers=shop.member.headers).json())["status"]
                in ("PAID", "FAILED")
                else None
            )
        )
        return settled, shop.stock(product["id"])

    def test_an_approved_payment_makes_the_order_paid(
        self, backend: str, shop: Shop, worker: Any, service: PaymentService
    ) -> None:
        order, stock = self._settle(shop, stock=3, quantity=2)
        assert (order["status"], stock) == ("PAID", 1)
        assert [r.headers["idempotency-key"] for r in service.requests] == [
            order["payment_reference"]
        ]

    def test_a_402_fails_the_order_and_gives_its_stock_back(
        self, backend: str, shop: Shop, worker: Any, service: PaymentService
    ) -> None:
        service.reply = (402, {"detail": "insufficient funds"})
        order, stock = self._settle(shop, stock=3, quantity=2)
        assert (order["status"], order["failure_reason"], stock) == (
            "FAILED",
            "insufficient funds",
            3,
        )
