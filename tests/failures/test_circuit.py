"""The gateway circuit breaker: shared state in the database, once per batch; payments wait, none lost."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from payments.engine.circuit import SweepGate, circuit_admit, circuit_record, circuit_reset, circuit_sweep_gate
from payments.engine.execution import payments_execute, payments_reconcile, payments_sweep
from payments.models import GatewayCircuit, Payment, PaymentEvent
from payments.state_machine import claim_due_payments
from payments.statuses import Status

from .conftest import Gateway, MakePayment

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("published")]
NAME = "sandbox"


@pytest.fixture(autouse=True)
def breaker(settings: Any) -> Any:
    settings.GATEWAY_BACKEND = NAME
    settings.CIRCUIT_WINDOW_SECONDS = 30.0
    settings.CIRCUIT_MIN_CALLS = 10
    settings.CIRCUIT_FAILURE_RATIO = 0.5
    settings.CIRCUIT_OPEN_SECONDS = 30.0
    settings.CIRCUIT_PROBE_SIZE = 2
    return settings


def actions() -> list[str]:
    return list(
        AuditEvent.objects.filter(target_type="payments.gatewaycircuit", target_id=NAME).values_list(
            "action", flat=True
        )
    )


def expire_open_period() -> None:
    GatewayCircuit.objects.filter(name=NAME).update(opened_until=timezone.now() - timedelta(seconds=1))


def test_it_stays_closed_below_the_minimum_volume_and_the_ratio() -> None:
    circuit_record(NAME, calls=9, failures=9)  # all failed, but too few to judge
    circuit_record(NAME, calls=20, failures=5)  # 14 of 29: under half
    assert GatewayCircuit.objects.get(name=NAME).state == "closed"
    assert circuit_admit(NAME, 50).allowed == 50


def test_it_opens_then_lets_one_probe_through_then_closes_on_success() -> None:
    # when half of a window's calls fail
    assert circuit_record(NAME, calls=12, failures=8) == "open"
    # then nobody calls the gateway until opened_until
    held = circuit_admit(NAME, 50)
    assert held.allowed == 0
    assert held.retry_in is not None
    assert timedelta(seconds=29) < held.retry_in <= timedelta(seconds=30)
    assert circuit_sweep_gate(NAME) == SweepGate.BLOCKED

    # after it, exactly one batch takes the probe, with at most CIRCUIT_PROBE_SIZE payments
    expire_open_period()
    assert circuit_sweep_gate(NAME) == SweepGate.PROBE  # the sweep hands out a probe's worth
    probe = circuit_admit(NAME, 50)
    assert (probe.allowed, probe.probe) == (2, True)
    assert circuit_admit(NAME, 50).allowed == 0  # everyone else waits for its answer
    assert circuit_sweep_gate(NAME) == SweepGate.BLOCKED

    # a healthy probe closes it, with a fresh window
    assert circuit_record(NAME, calls=2, failures=0, probe=True) == "closed"
    assert circuit_admit(NAME, 50).allowed == 50
    assert circuit_sweep_gate(NAME) == SweepGate.CLOSED
    assert actions() == ["gateway_circuit.opened", "gateway_circuit.half_opened", "gateway_circuit.closed"]


def test_a_failed_probe_opens_it_again() -> None:
    circuit_record(NAME, calls=10, failures=10)
    expire_open_period()
    assert circuit_admit(NAME, 5).probe
    assert circuit_record(NAME, calls=2, failures=2, probe=True) == "open"
    assert circuit_admit(NAME, 5).allowed == 0
    # a late report of a batch admitted before it opened decides nothing
    assert circuit_record(NAME, calls=50, failures=0) == "open"


def test_an_operator_can_close_it() -> None:
    circuit_record(NAME, calls=10, failures=10)
    circuit_reset(NAME, actor="staff:1")
    assert circuit_admit(NAME, 3).allowed == 3
    assert AuditEvent.objects.filter(action="gateway_circuit.closed", actor="staff:1").exists()


def test_while_open_payments_wait_unclaimed_and_uncounted(
    use_gateway: Gateway, make_payment: MakePayment, published: list[Any]
) -> None:
    circuit_record(NAME, calls=10, failures=10)
    due = make_payment(due_in=-1)

    # the sweep hands out nothing that would call the gateway: the payment stays scheduled (cancelable)
    report = payments_sweep()
    assert report.circuit_open
    assert published == []
    due.refresh_from_db()
    assert due.status == Status.SCHEDULED


def test_when_a_probe_is_due_the_sweep_hands_out_only_a_probes_worth(
    use_gateway: Gateway, make_payment: MakePayment, published: list[Any]
) -> None:
    circuit_record(NAME, calls=10, failures=10)
    expire_open_period()
    payments = [make_payment(due_in=-1) for _ in range(5)]

    report = payments_sweep()

    assert (report.circuit_open, report.dispatched) == (True, 2)  # CIRCUIT_PROBE_SIZE
    statuses = sorted(Payment.objects.filter(pk__in=[p.pk for p in payments]).values_list("status", flat=True))
    assert statuses == ["dispatched", "dispatched", "scheduled", "scheduled", "scheduled"]


def test_an_execution_arriving_while_open_defers_without_an_attempt(
    use_gateway: Gateway, make_payment: MakePayment
) -> None:
    # given a payment claimed just before the circuit opened
    payment = make_payment(due_in=-1)
    claim_due_payments(lookahead=timedelta(seconds=30), lease=timedelta(seconds=120), limit=10, actor="t")
    circuit_record(NAME, calls=10, failures=10)

    report = payments_execute([payment.pk])

    # then it was not submitted: still dispatched (cancelable), attempt 0, lease pushed to the circuit's reopening
    assert (report.deferred, report.submitted) == (1, 0)
    payment.refresh_from_db()
    assert (payment.status, payment.attempts) == (Status.DISPATCHED, 0)
    assert payment.lease_expires_at is not None
    assert payment.lease_expires_at > timezone.now() + timedelta(seconds=25)
    assert use_gateway.charges(payment.pk) == []
    last = PaymentEvent.objects.filter(payment=payment).last()
    assert last is not None
    assert (last.from_status, last.to_status, last.reason) == ("dispatched", "dispatched", "gateway_unavailable")

    # and once the circuit is half-open, the probe executes it
    expire_open_period()
    Payment.objects.filter(pk=payment.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert payments_sweep().redispatched == 1
    assert payments_execute([payment.pk]).recorded == 1
    payment.refresh_from_db()
    assert payment.status == Status.SUCCEEDED
    assert GatewayCircuit.objects.get(name=NAME).state == "closed"


def test_a_reconciliation_arriving_while_open_waits_without_climbing_the_ladder(
    use_gateway: Gateway, make_payment: MakePayment
) -> None:
    payment = make_payment(due_in=-1)
    Payment.objects.filter(pk=payment.pk).update(status=Status.RECONCILING, attempts=1, next_attempt_at=timezone.now())
    circuit_record(NAME, calls=10, failures=10)

    report = payments_reconcile([payment.pk])

    assert report.deferred == 1
    payment.refresh_from_db()
    assert (payment.status, payment.reconcile_attempts) == (Status.RECONCILING, 0)
    assert payment.next_attempt_at is not None
    assert payment.next_attempt_at > timezone.now() + timedelta(seconds=25)


def test_the_engine_opens_it_from_real_gateway_failures(use_gateway: Gateway, make_payment: MakePayment) -> None:
    # given a gateway answering 503 to everything
    use_gateway.set_faults(error_rate=1.0)
    payments = [make_payment(due_in=-1) for _ in range(12)]
    claim_due_payments(lookahead=timedelta(seconds=30), lease=timedelta(seconds=120), limit=50, actor="t")

    payments_execute([p.pk for p in payments])

    # then the batch's 12 failures opened it (one update for the batch), each payment waits for a retry
    assert GatewayCircuit.objects.get(name=NAME).state == "open"
    assert actions() == ["gateway_circuit.opened"]
    assert set(Payment.objects.filter(pk__in=[p.pk for p in payments]).values_list("status", flat=True)) == {
        Status.RETRY_SCHEDULED
    }


def test_deferring_a_retry_for_an_open_circuit_never_moves_it_earlier(
    use_gateway: Gateway, make_payment: MakePayment
) -> None:
    # given a retry the gateway asked to wait 3,000 s for (Retry-After), and a stale execution
    # message for it arriving while the circuit is open
    payment = make_payment(due_in=-1)
    backoff = timezone.now() + timedelta(seconds=3000)
    Payment.objects.filter(pk=payment.pk).update(status=Status.RETRY_SCHEDULED, attempts=1, next_attempt_at=backoff)
    circuit_record(NAME, calls=10, failures=10)

    report = payments_execute([payment.pk])

    # then it is deferred, but not earlier than its own backoff
    assert report.deferred == 1
    payment.refresh_from_db()
    assert payment.status == Status.RETRY_SCHEDULED
    assert payment.next_attempt_at is not None
    assert payment.next_attempt_at >= backoff


def test_deferring_a_reconciliation_never_moves_it_earlier(use_gateway: Gateway, make_payment: MakePayment) -> None:
    # given a reconciliation whose next rung is an hour away, asked early while the circuit is open
    payment = make_payment(due_in=-1)
    rung = timezone.now() + timedelta(hours=1)
    Payment.objects.filter(pk=payment.pk).update(status=Status.RECONCILING, attempts=1, next_attempt_at=rung)
    circuit_record(NAME, calls=10, failures=10)

    assert payments_reconcile([payment.pk]).deferred == 1

    payment.refresh_from_db()
    assert payment.next_attempt_at is not None
    assert payment.next_attempt_at >= rung
