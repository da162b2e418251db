"""SandboxGateway against the real sandbox gateway process: every outcome, checked in its ledger."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest

from payments.gateways.base import ChargeRequest, GatewayLookupError, OutcomeKind
from payments.gateways.sandbox import SandboxGateway
from tests.sandbox_process import SandboxProcess

pytestmark = pytest.mark.processes

MakeRequest = Callable[..., ChargeRequest]


@pytest.fixture
def adapter(sandbox: SandboxProcess) -> Iterator[SandboxGateway]:
    gateway = SandboxGateway(base_url=sandbox.url, timeout=5.0)
    yield gateway
    gateway.close()


def test_it_charges_and_returns_the_gateway_reference(adapter, sandbox, make_request: MakeRequest):
    request = make_request()

    outcome = adapter.charge(request)

    assert outcome.kind is OutcomeKind.SUCCEEDED
    assert outcome.reference.startswith("ch_")
    [charge] = sandbox.charges_for_key(request.idempotency_key)
    assert charge["id"] == outcome.reference
    assert charge["status"] == "succeeded"
    assert Decimal(charge["amount"]) == Decimal("125.50")
    assert charge["currency"] == "EUR"
    # the payment id travels in metadata, as the contract says
    assert charge["payment_id"] == request.payment_id
    assert charge["metadata"] == {"payment_id": request.payment_id}


@pytest.mark.parametrize(
    ("amount", "currency", "sent"),
    [("500", "JPY", "500"), ("1.234", "BHD", "1.234"), ("7.5", "EUR", "7.50")],
)
def test_it_sends_amounts_as_the_currency_writes_them(adapter, sandbox, make_request, amount, currency, sent):
    request = make_request(amount=Decimal(amount), currency=currency)

    assert adapter.charge(request).kind is OutcomeKind.SUCCEEDED

    [charge] = sandbox.charges_for_key(request.idempotency_key)
    assert charge["amount"] == sent


def test_it_reports_a_decline_token_as_declined(adapter, sandbox, make_request: MakeRequest):
    request = make_request(payment_method="pm_card_decline")

    outcome = adapter.charge(request)

    assert outcome.kind is OutcomeKind.DECLINED
    assert outcome.failure_code == "card_declined"
    assert outcome.failure_message == "The payment method was declined."
    assert outcome.reference.startswith("ch_")
    assert not outcome.needs_operator
    [charge] = sandbox.charges_for_key(request.idempotency_key)
    assert charge["status"] == "declined"


def test_it_charges_once_for_the_same_key_sent_twice(adapter, sandbox, make_request: MakeRequest):
    request = make_request()

    first = adapter.charge(request)
    second = adapter.charge(request)

    assert first.kind is second.kind is OutcomeKind.SUCCEEDED
    assert first.reference == second.reference
    assert len(sandbox.charges_for_payment(request.payment_id)) == 1


def test_a_key_reused_for_another_request_is_unknown_and_pages_an_operator(adapter, sandbox, make_request):
    first = make_request()
    assert adapter.charge(first).kind is OutcomeKind.SUCCEEDED

    # given the same key with another amount (a bug upstream): never treat it as new, never as charged
    outcome = adapter.charge(make_request(idempotency_key=first.idempotency_key, amount=Decimal("99.00")))

    assert outcome.kind is OutcomeKind.UNKNOWN
    assert outcome.needs_operator
    assert "idempotency_key_reused" in outcome.detail
    assert len(sandbox.charges_for_key(first.idempotency_key)) == 1


def test_a_503_is_retryable_and_charges_nothing(adapter, sandbox, faults, make_request: MakeRequest):
    faults(error_rate=1.0)
    request = make_request()

    outcome = adapter.charge(request)

    assert outcome.kind is OutcomeKind.RETRYABLE
    assert sandbox.charges_for_key(request.idempotency_key) == []


def test_a_timeout_is_unknown_and_charges_nothing(sandbox, faults, make_request: MakeRequest):
    faults(timeout_rate=1.0)
    request = make_request()
    impatient = SandboxGateway(base_url=sandbox.url, timeout=0.5)

    try:
        outcome = impatient.charge(request)
    finally:
        impatient.close()

    assert outcome.kind is OutcomeKind.UNKNOWN
    assert outcome.detail.startswith("ReadTimeoutError")
    assert sandbox.charges_for_key(request.idempotency_key) == []


def test_a_dropped_response_is_unknown_and_find_charge_finds_the_charge(adapter, sandbox, faults, make_request):
    faults(drop_response_rate=1.0)
    request = make_request()

    outcome = adapter.charge(request)

    assert outcome.kind is OutcomeKind.UNKNOWN
    assert not outcome.needs_operator
    # lookups are never faulted: the reconciler can tell what happened
    record = adapter.find_charge(request.idempotency_key)
    assert record is not None
    [charge] = sandbox.charges_for_key(request.idempotency_key)
    assert record.reference == charge["id"]
    assert record.status == "succeeded"
    assert record.idempotency_key == request.idempotency_key
    assert record.amount == Decimal("125.50")
    assert record.currency == "EUR"
    assert record.payment_id == request.payment_id


def test_a_dropped_replay_is_unknown_and_still_charges_once(adapter, sandbox, faults, make_request):
    request = make_request()
    assert adapter.charge(request).kind is OutcomeKind.SUCCEEDED
    faults(drop_response_rate=1.0)

    assert adapter.charge(request).kind is OutcomeKind.UNKNOWN

    assert len(sandbox.charges_for_payment(request.payment_id)) == 1


def test_find_charge_returns_none_for_a_key_never_charged(adapter):
    assert adapter.find_charge("pay_never_charged:1") is None


def test_find_charge_reports_a_declined_charge(adapter, make_request: MakeRequest):
    request = make_request(payment_method="pm_card_decline")
    adapter.charge(request)

    record = adapter.find_charge(request.idempotency_key)

    assert record is not None
    assert record.status == "declined"
    assert record.failure_code == "card_declined"


def test_a_stopped_gateway_is_retryable_and_lookups_fail_loudly(private_sandbox, make_request: MakeRequest):
    adapter = SandboxGateway(base_url=private_sandbox.url, timeout=5.0)
    try:
        # given a warm keep-alive connection to a gateway that then stops
        assert adapter.charge(make_request()).kind is OutcomeKind.SUCCEEDED
        private_sandbox.stop()

        outcome = adapter.charge(make_request())

        assert outcome.kind is OutcomeKind.RETRYABLE
        assert outcome.detail.startswith("NewConnectionError")
        with pytest.raises(GatewayLookupError):
            adapter.find_charge("pay_any:1")
    finally:
        adapter.close()


def test_charge_many_returns_every_outcome_in_order(adapter, sandbox, make_request: MakeRequest):
    requests = [make_request(amount=Decimal(f"{i + 1}.00")) for i in range(200)]
    before = sandbox.total_charges()

    outcomes = adapter.charge_many(requests)

    assert len(outcomes) == 200
    assert all(outcome.kind is OutcomeKind.SUCCEEDED for outcome in outcomes)
    assert len({outcome.reference for outcome in outcomes}) == 200
    assert sandbox.total_charges() - before == 200
    # in input order: each outcome's charge is the one made for the request at the same position
    for request, outcome in zip(requests[::37], outcomes[::37], strict=True):
        [charge] = sandbox.charges_for_key(request.idempotency_key)
        assert charge["id"] == outcome.reference
        assert Decimal(charge["amount"]) == request.amount


def test_charge_many_mixes_outcomes_without_losing_any(adapter, sandbox, make_request: MakeRequest):
    requests = [make_request(payment_method="pm_card_decline" if i % 3 == 0 else "pm_card_visa") for i in range(30)]

    outcomes = adapter.charge_many(requests)

    expected = [OutcomeKind.DECLINED if i % 3 == 0 else OutcomeKind.SUCCEEDED for i in range(30)]
    assert [outcome.kind for outcome in outcomes] == expected


def test_a_restarted_gateway_costs_no_outcome(private_sandbox, make_request: MakeRequest, caplog):
    adapter = SandboxGateway(base_url=private_sandbox.url, timeout=5.0, concurrency=16)
    try:
        # given warm keep-alive connections to a gateway that restarts between two batches
        first = [make_request() for _ in range(16)]
        assert {o.kind for o in adapter.charge_many(first)} == {OutcomeKind.SUCCEEDED}
        private_sandbox.stop()
        private_sandbox.start()
        second = [make_request() for _ in range(16)]

        with caplog.at_level(logging.DEBUG, logger="urllib3.connectionpool"):
            outcomes = adapter.charge_many(second)

        # every pooled connection the old process closed was replaced before a byte was written to it (the
        # request provably never went out on it), so the batch goes through: no UNKNOWN to reconcile
        assert {o.kind for o in outcomes} == {OutcomeKind.SUCCEEDED}
        assert any("Resetting dropped connection" in r.getMessage() for r in caplog.records)
        for request, outcome in zip(second, outcomes, strict=True):
            [charge] = private_sandbox.charges_for_key(request.idempotency_key)
            assert charge["id"] == outcome.reference
    finally:
        adapter.close()


def test_under_mixed_faults_every_outcome_agrees_with_the_ledger(sandbox, faults, make_request: MakeRequest):
    # 503 (nothing charged), hang past our timeout (nothing charged), dropped answer (charged): all in one batch
    faults(error_rate=0.25, timeout_rate=0.15, drop_response_rate=0.25)
    adapter = SandboxGateway(base_url=sandbox.url, timeout=0.5, concurrency=32)
    requests = [make_request() for _ in range(120)]
    before = sandbox.total_charges()
    try:
        outcomes = adapter.charge_many(requests)

        seen: dict[str, int] = {}
        for request, outcome in zip(requests, outcomes, strict=True):
            record = adapter.find_charge(request.idempotency_key)  # lookups are never faulted
            if outcome.kind is OutcomeKind.SUCCEEDED:
                assert record is not None
                assert record.reference == outcome.reference
                seen["charged"] = seen.get("charged", 0) + 1
                continue
            charges = sandbox.charges_for_key(request.idempotency_key)
            if outcome.kind is OutcomeKind.RETRYABLE:  # proven not charged
                assert outcome.detail.startswith("HTTP 503"), outcome.detail
                case = "refused"
            elif outcome.detail.startswith("ReadTimeoutError"):  # the timeout fault never charges
                assert outcome.kind is OutcomeKind.UNKNOWN
                case = "timed out"
            else:  # the drop fault charges, then closes the connection
                assert outcome.kind is OutcomeKind.UNKNOWN
                assert outcome.detail.startswith("ProtocolError"), outcome.detail
                case = "dropped"
            if case == "dropped":
                [charge] = charges  # exactly once
                assert record is not None
                assert record.reference == charge["id"]
            else:
                assert charges == []
                assert record is None
            seen[case] = seen.get(case, 0) + 1
        assert set(seen) == {"refused", "timed out", "dropped", "charged"}, seen
        assert sandbox.total_charges() - before == seen["charged"] + seen["dropped"]
    finally:
        adapter.close()
