"""The payment gateway: an interface, a simulated gateway, and a circuit breaker.

A gateway charges an amount under a *reference*: the same reference charged
twice is one charge (the gateway's idempotency key), so a redelivered payment
job never charges twice, and a charge asked again is answered as it was the
first time. A charge that turns out to be owed back is refunded under the same
reference. The simulated gateway decides each reference's fate from a seeded
hash, so every process, and every retry, sees the same outcome.
"""

from __future__ import annotations

import enum
import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol, TypeVar

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


_BREAKERS: dict[tuple[object, ...], CircuitBreaker] = {}
_BREAKERS_LOCK = threading.Lock()


def gateway_for(settings: Settings) -> CircuitBreaker:
    """The gateway the settings describe, behind one circuit breaker per process."""
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
            gateway = SimulatedGateway(
                latency_ms=(settings.payment_latency_min_ms, settings.payment_latency_max_ms),
                success_rate=settings.payment_success_rate,
                seed=settings.payment_seed,
            )
            breaker = _BREAKERS[key] = CircuitBreaker(gateway)
        return breaker
