"""The payment gateway: an interface, a simulated and an HTTP gateway, a circuit breaker.

A gateway charges an amount under a *reference*: the same reference charged
twice is one charge (the gateway's idempotency key), so a redelivered payment
job never charges twice, and a charge asked again is answered as it was the
first time. A charge that turns out to be owed back is refunded under the same
reference. The simulated gateway decides each reference's fate from a seeded
hash, so every process, and every retry, sees the same outcome.

The HTTP gateway (``OPSLINE_PAYMENT_GATEWAY=http``) speaks this contract to
``OPSLINE_PAYMENT_GATEWAY_URL``, with ``Authorization: Bearer <token>`` when a
token is set:

* ``POST {url}/charges``, JSON ``{"reference", "amount" (string, 2 places),
  "currency"}``, header ``Idempotency-Key: <reference>``. A 2xx JSON answer
  ``{"status": "succeeded" | "declined", "detail": "..."}`` is the result; a 402
  is a decline (its detail from a JSON body's ``detail``, else the status).
* ``POST {url}/refunds``, the same body, ``Idempotency-Key: refund-<reference>``;
  any 2xx is done.

Anything else is ``GatewayUnavailable``, never a decline: timeouts, connection
errors, 408, 429, 5xx, 401/403 (a misconfiguration must not fail customers'
orders), redirects (not followed), other 4xx, a 2xx that is not JSON or names
another status. The payment job then retries under the same reference and the
circuit breaker counts the failure. Its message says what came back (status and
at most 200 characters of body), never the token.
"""

from __future__ import annotations

import enum
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol, TypeVar

import httpx
from pydantic import SecretStr

from opsline import __version__
from opsline.orders.models import CENT
from opsline.settings import Settings


class ChargeOutcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    DECLINED = "declined"


@dataclass(frozen=True, slots=True)
class ChargeResult:
    outcome: ChargeOutcome
    detail: str


class GatewayUnavailable(Exception):
    """A transient failure: the charge may be retried under the same reference."""


class PaymentGateway(Protocol):
    def charge(self, *, reference: str, amount: Decimal, currency: str) -> ChargeResult: ...

    def refund(self, *, reference: str, amount: Decimal, currency: str) -> None:
        """Give back the charge made under ``reference``; refunding twice is one refund."""
        ...


T = TypeVar("T")


class SimulatedGateway:
    """Latency uniform in [min, max] ms; success with probability ``success_rate``."""

    def __init__(
        self,
        *,
        latency_ms: tuple[float, float] = (50, 200),
        success_rate: float = 0.8,
        seed: str = "opsline",
    ) -> None:
        if not 0 <= success_rate <= 1:
            raise ValueError("success_rate must be within [0, 1]")
        self.latency_ms = latency_ms
        self.success_rate = success_rate
        self.seed = seed

    def _draw(self, reference: str, salt: str) -> float:
        digest = hashlib.sha256(f"{self.seed}:{salt}:{reference}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def charge(self, *, reference: str, amount: Decimal, currency: str) -> ChargeResult:
        low, high = self.latency_ms
        time.sleep((low + (high - low) * self._draw(reference, "latency")) / 1000)
        if self._draw(reference, "outcome") < self.success_rate:
            return ChargeResult(ChargeOutcome.SUCCEEDED, f"charged {amount} {currency}")
        return ChargeResult(ChargeOutcome.DECLINED, "card declined (simulated)")

    def refund(self, *, reference: str, amount: Decimal, currency: str) -> None:
        low, high = self.latency_ms
        time.sleep((low + (high - low) * self._draw(reference, "refund")) / 1000)


class CircuitOpen(GatewayUnavailable):
    pass


class CircuitBreaker:
    """Fail fast after ``threshold`` consecutive transient failures, for ``reset_after`` s.

    Then one trial call is let through (half-open) while the others still fail
    fast: its success closes the circuit, its failure opens it again. Declines
    are answers, not failures.
    """

    def __init__(self, gateway: PaymentGateway, *, threshold: int = 5, reset_after: float = 30):
        self.gateway = gateway
        self.threshold = threshold
        self.reset_after = reset_after
        self._failures = 0
        self._opened_at: float | None = None
        self._trial = False
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._opened_at is not None and (self._trial or not self._half_open())

    def _half_open(self) -> bool:
        return (
            self._opened_at is not None and time.monotonic() - self._opened_at >= self.reset_after
        )

    def charge(self, *, reference: str, amount: Decimal, currency: str) -> ChargeResult:
        return self._call(
            lambda: self.gateway.charge(reference=reference, amount=amount, currency=currency)
        )

    def refund(self, *, reference: str, amount: Decimal, currency: str) -> None:
        self._call(
            lambda: self.gateway.refund(reference=reference, amount=amount, currency=currency)
        )

    def _call(self, call: Callable[[], T]) -> T:
        with self._lock:
            if self._opened_at is not None:
                if self._trial or not self._half_open():
                    raise CircuitOpen("payment gateway circuit is open; retry later")
                self._trial = True
        try:
            result = call()
        except GatewayUnavailable:
            with self._lock:
                self._trial = False
                self._failures += 1
                if self._failures >= self.threshold or self._opened_at is not None:
                    self._opened_at = time.monotonic()
            raise
        except BaseException:
            with self._lock:
                self._trial = False  # not the gateway's failure: the next call tries again
            raise
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._trial = False
        return result


# Details land in columns of 200 characters (payment attempts, orders' failure reason).
_DETAIL_CHARS = 200


class HttpGateway:
    """A payment service over HTTP, per the contract in this module's docstring.

    One ``httpx.Client`` per instance: connections are reused, and the client is
    safe to share between the worker's threads. ``timeout_s`` bounds each phase
    of a call (connect, write, read, waiting for a pooled connection).
    """

    def __init__(self, url: str, *, token: SecretStr | None = None, timeout_s: float = 10.0):
        self.url = url.rstrip("/")
        self._token = token
        headers = {"User-Agent": f"opsline/{__version__}", "Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token.get_secret_value()}"
        self._client = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout_s, follow_redirects=False
        )

    def __repr__(self) -> str:
        return f"HttpGateway({self.url!r})"

    def close(self) -> None:
        self._client.close()

    def charge(self, *, reference: str, amount: Decimal, currency: str) -> ChargeResult:
        response = self._post("/charges", reference, amount, currency, key=reference)
        body = _json(response)
        if response.status_code == 402:
            return ChargeResult(ChargeOutcome.DECLINED, self._detail(body) or "declined: HTTP 402")
        status = body.get("status") if response.is_success and isinstance(body, dict) else None
        if status not in ("succeeded", "declined"):
            raise GatewayUnavailable(self._unexpected("/charges", response))
        if status == "declined":
            return ChargeResult(ChargeOutcome.DECLINED, self._detail(body) or "declined")
        return ChargeResult(
            ChargeOutcome.SUCCEEDED, self._detail(body) or f"charged {amount} {currency}"
        )

    def refund(self, *, reference: str, amount: Decimal, currency: str) -> None:
        response = self._post("/refunds", reference, amount, currency, key=f"refund-{reference}")
        if not response.is_success:
            raise GatewayUnavailable(self._unexpected("/refunds", response))

    def _post(
        self, path: str, reference: str, amount: Decimal, currency: str, *, key: str
    ) -> httpx.Response:
        body = {
            "reference": reference,
            "amount": str(amount.quantize(CENT)),
            "currency": currency,
        }
        try:
            return self._client.post(path, json=body, headers={"Idempotency-Key": key})
        except httpx.TimeoutException as exc:
            raise GatewayUnavailable(
                f"payment gateway: POST {path} timed out ({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:  # refused, reset, DNS, TLS, a broken answer
            raise GatewayUnavailable(
                f"payment gateway: POST {path} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def _detail(self, body: object) -> str | None:
        detail = body.get("detail") if isinstance(body, dict) else None
        if not isinstance(detail, str) or not detail:
            return None
        return self._scrub(detail)

    def _unexpected(self, path: str, response: httpx.Response) -> str:
        text = self._scrub(response.content.decode("utf-8", "replace")) or "(empty body)"
        hint = (
            " (check OPSLINE_PAYMENT_GATEWAY_TOKEN)" if response.status_code in (401, 403) else ""
        )
        return f"payment gateway: POST {path} answered HTTP {response.status_code}{hint}: {text}"

    def _scrub(self, text: str) -> str:
        """One line of at most 200 characters, without the token should the service echo it."""
        if self._token is not None and self._token.get_secret_value():
            text = text.replace(self._token.get_secret_value(), "[token]")
        return " ".join(text.split())[:_DETAIL_CHARS]


def _json(response: httpx.Response) -> object:
    try:
        return json.loads(response.content)
    except ValueError:  # not JSON, or not UTF-8
        return None


_BREAKERS: dict[tuple[object, ...], CircuitBreaker] = {}
_BREAKERS_LOCK = threading.Lock()


def gateway_for(settings: Settings) -> CircuitBreaker:
    """The gateway the settings name, behind one circuit breaker per process and configuration.

    The key holds the token as its ``SecretStr``: compared by value, shown masked.
    """
    key: tuple[object, ...]
    if settings.payment_gateway == "http":
        key = (
            "http",
            settings.payment_gateway_url,
            settings.payment_gateway_timeout_s,
            settings.payment_gateway_token,
        )
    else:
        key = (
            settings.payment_gateway,
            settings.payment_success_rate,
            settings.payment_latency_min_ms,
            settings.payment_latency_max_ms,
            settings.payment_seed,
        )
    with _BREAKERS_LOCK:
        breaker = _BREAKERS.get(key)
        if breaker is None:
            breaker = _BREAKERS[key] = CircuitBreaker(_build(settings))
        return breaker


def _build(settings: Settings) -> PaymentGateway:
    if settings.payment_gateway == "http":
        assert settings.payment_gateway_url is not None  # the settings validate it
        return HttpGateway(
            settings.payment_gateway_url,
            token=settings.payment_gateway_token,
            timeout_s=settings.payment_gateway_timeout_s,
        )
    return SimulatedGateway(
        latency_ms=(settings.payment_latency_min_ms, settings.payment_latency_max_ms),
        success_rate=settings.payment_success_rate,
        seed=settings.payment_seed,
    )
