"""The payment gateway's circuit breaker and the simulated gateway."""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import pytest

from opsline.orders.gateway import (
    ChargeOutcome,
    ChargeResult,
    CircuitBreaker,
    CircuitOpen,
    GatewayUnavailable,
    SimulatedGateway,
)

AMOUNT = {"amount": Decimal("9.99"), "currency": "EUR"}


class FlakyGateway:
    """A partner's gateway stand-in: fails while ``down``; ``hold`` keeps a call open."""

    def __init__(self) -> None:
        self.down = True
        self.calls = 0
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()

    def charge(self, *, reference: str, amount: Decimal, currency: str) -> ChargeResult:
        self.calls += 1
        self.entered.set()
        self.hold.wait(5)
        if self.down:
            raise GatewayUnavailable("partner down")
        return ChargeResult(ChargeOutcome.SUCCEEDED, "ok")

    def refund(self, *, reference: str, amount: Decimal, currency: str) -> None:
        self.charge(reference=reference, amount=amount, currency=currency)


def _open(breaker: CircuitBreaker, gateway: FlakyGateway) -> None:
    for _ in range(breaker.threshold):
        with pytest.raises(GatewayUnavailable):
            breaker.charge(reference="r", **AMOUNT)
    assert breaker.is_open


def test_the_circuit_opens_after_consecutive_failures_and_fails_fast() -> None:
    gateway = FlakyGateway()
    breaker = CircuitBreaker(gateway, threshold=3, reset_after=60)
    _open(breaker, gateway)
    with pytest.raises(CircuitOpen):
        breaker.charge(reference="r", **AMOUNT)
    with pytest.raises(CircuitOpen):
        breaker.refund(reference="r", **AMOUNT)
    assert gateway.calls == 3


def test_half_open_lets_exactly_one_trial_through() -> None:
    gateway = FlakyGateway()
    breaker = CircuitBreaker(gateway, threshold=2, reset_after=0.05)
    _open(breaker, gateway)
    time.sleep(0.06)
    gateway.down, gateway.entered = False, threading.Event()
    gateway.hold.clear()
    trial: list[object] = []
    thread = threading.Thread(target=lambda: trial.append(breaker.charge(reference="r", **AMOUNT)))
    thread.start()
    assert gateway.entered.wait(5)
    # While the trial is out, everyone else still fails fast.
    for _ in range(5):
        with pytest.raises(CircuitOpen):
            breaker.charge(reference="other", **AMOUNT)
    assert breaker.is_open
    gateway.hold.set()
    thread.join(5)
    assert trial == [ChargeResult(ChargeOutcome.SUCCEEDED, "ok")]
    assert not breaker.is_open and gateway.calls == 3
    assert breaker.charge(reference="r", **AMOUNT).outcome is ChargeOutcome.SUCCEEDED


def test_a_failed_trial_opens_the_circuit_again() -> None:
    gateway = FlakyGateway()
    breaker = CircuitBreaker(gateway, threshold=2, reset_after=0.05)
    _open(breaker, gateway)
    time.sleep(0.06)
    with pytest.raises(GatewayUnavailable):
        breaker.charge(reference="r", **AMOUNT)  # the trial, still down
    with pytest.raises(CircuitOpen):
        breaker.charge(reference="r", **AMOUNT)
    assert gateway.calls == 3


def test_declines_are_answers_not_failures() -> None:
    breaker = CircuitBreaker(
        SimulatedGateway(latency_ms=(0, 0), success_rate=0.0), threshold=2, reset_after=60
    )
    for n in range(5):
        assert breaker.charge(reference=f"r{n}", **AMOUNT).outcome is ChargeOutcome.DECLINED
    assert not breaker.is_open


def test_the_simulated_gateway_answers_a_reference_alike_every_time() -> None:
    gateway = SimulatedGateway(latency_ms=(0, 0), success_rate=0.5, seed="t")
    answers = {
        ref: {gateway.charge(reference=ref, **AMOUNT).outcome for _ in range(3)}
        for ref in (f"order-{n}" for n in range(40))
    }
    assert all(len(outcomes) == 1 for outcomes in answers.values())
    assert {o for outcomes in answers.values() for o in outcomes} == set(ChargeOutcome)
    gateway.refund(reference="order-1", **AMOUNT)
