"""Failure drills with real processes: sandbox faults, a killed worker, a gateway outage, poison messages.

Each test starts its own ``celery worker`` / ``celery beat`` (tests/engine's fixtures) with
short retry, reconcile and circuit settings passed through the environment, and checks the
sandbox gateway's own ledger: the only witness of money moving.
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import timedelta
from io import StringIO
from typing import Any

import httpx
import pytest
from django.core.management import call_command
from django.utils import timezone

from audit.models import AuditEvent
from config.celery import app as celery_app
from payments.engine import execution
from payments.models import DeadLetter, Payment, PaymentEvent
from payments.statuses import Status

from .conftest import Engine, Gateway, MakePayment, wait_for, wait_terminal

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]

# Short policies for drills (the defaults are minutes and hours): passed to the worker's environment.
FAST = {
    "GATEWAY_TIMEOUT_SECONDS": "1",
    "RETRY_BASE_SECONDS": "0.5",
    "RETRY_CAP_SECONDS": "3",
    "RECONCILE_LADDER_SECONDS": "0.5,1,2",
}
LADDER = [0.5, 1.0, 2.0]


def injected(gateway: Gateway) -> dict[str, int]:
    stats: dict[str, int] = httpx.get(f"{gateway.url}/v1/stats", timeout=10).json()["faults_injected"]
    return stats


def timelines(ids: list[Any]) -> dict[Any, list[PaymentEvent]]:
    events: dict[Any, list[PaymentEvent]] = defaultdict(list)
    for event in PaymentEvent.objects.filter(payment_id__in=ids).order_by("at", "id"):
        events[event.payment_id].append(event)
    return events


def test_200_payments_through_503s_timeouts_and_dropped_responses_end_charged_exactly_once(
    engine: Engine, gateway: Gateway, make_payment: MakePayment
) -> None:
    # given a worker with short retries, and a breaker set not to trip at this failure rate (tested below)
    policy = {**FAST, "RETRY_MAX_ATTEMPTS": "12", "CIRCUIT_FAILURE_RATIO": "0.95"}
    engine.start_worker(**policy)
    engine.start_beat()
    due_at = timezone.now() + timedelta(seconds=6)
    payments = [make_payment(due_at=due_at) for _ in range(180)]
    payments += [make_payment(due_at=due_at, payment_method="pm_card_decline") for _ in range(20)]
    ids = [p.pk for p in payments]
    # 30 % answered 503, 20 % hang past the client's timeout, 10 % charged and then the connection dropped
    gateway.set_faults(error_rate=0.3, timeout_rate=0.2, drop_response_rate=0.1)

    # when they come due together
    final = wait_terminal(ids, timeout=150)
    elapsed = (timezone.now() - due_at).total_seconds()
    faults = injected(gateway)
    gateway.clear_faults()

    # then every payment is terminal: charged exactly once if it succeeded, never if it failed
    declines = {p.pk for p in payments[180:]}
    for payment_id in ids:
        payment = final[payment_id]
        charges = gateway.charges(payment_id)
        succeeded = [c for c in charges if c["status"] == "succeeded"]
        if payment_id in declines:
            assert payment.status == Status.FAILED, payment_id
            assert payment.failure_code == "card_declined"
            assert succeeded == []
        else:
            assert payment.status == Status.SUCCEEDED, payment_id
            assert len(succeeded) == 1, charges
            assert len(charges) == 1  # one key ever reached the ledger
            assert succeeded[0]["id"] == payment.gateway_reference
        assert payment.attempts <= 12

    # and the attempts followed the backoff: each retry waited at least what full jitter drew for it,
    # a draw within [0, min(cap, base * 2**n)]; each unknown outcome climbed the reconcile ladder
    events = timelines(ids)
    retries = reconciled = 0
    for payment_id, timeline in events.items():
        submits = {e.attempt: e for e in timeline if e.to_status == Status.SUBMITTING}
        for event in timeline:
            if event.to_status == Status.RETRY_SCHEDULED:
                retries += 1
                drawn = event.data["retry_in_seconds"]
                ceiling = min(3.0, 0.5 * 2 ** event.data["retry_number"])
                assert event.data["retry_number"] == event.attempt - 1
                assert 0 <= drawn <= ceiling == event.data["backoff_ceiling_seconds"]
                following = submits[event.attempt + 1]
                assert (following.at - event.at).total_seconds() >= drawn - 0.001, (payment_id, drawn)
            if event.to_status == Status.RECONCILING and event.reason == "outcome_unknown":
                reconciled += 1
                end = timeline[-1]
                tries = final[payment_id].reconcile_attempts
                floor = sum(LADDER[min(i, len(LADDER) - 1)] for i in range(tries + 1))
                assert end.attempt == event.attempt  # settled under the same key
                assert (end.at - event.at).total_seconds() >= floor - 0.001, (payment_id, tries)
    assert retries > 20
    assert reconciled > 20
    print(
        f"200 payments with faults {faults}: all terminal {elapsed:.1f}s after due;"
        f" {retries} retries, {reconciled} reconciliations"
    )


def test_a_worker_killed_between_the_gateways_answer_and_the_commit_is_reconciled_to_one_charge(
    engine: Engine, gateway: Gateway, make_payment: MakePayment
) -> None:
    # given a worker that, by the fault-injection hook, stalls after the gateway charged and before recording
    short_lease = {"SUBMIT_LEASE_SECONDS": "5", "GATEWAY_TIMEOUT_SECONDS": "0.75"}  # a lease its work fits
    victim = engine.start_worker(PAYMENTS_FAULT_PAUSE_AFTER_GATEWAY_SECONDS="60", **short_lease)
    engine.start_beat()
    payment = make_payment(due_in=2)

    # when it is SIGKILLed while the charge exists at the gateway and the database says "submitting"
    wait_for(lambda: gateway.charges(payment.pk), timeout=20, what="the charge at the gateway")
    assert Payment.objects.get(pk=payment.pk).status == Status.SUBMITTING
    assert "FAULT INJECTION" in victim.log()
    victim.kill_hard()
    engine.start_worker(**short_lease)

    # then the lease runs out, reconciliation finds the charge under the same key, and it is recorded once
    final = wait_terminal([payment.pk], timeout=30)[payment.pk]
    [charge] = gateway.charges(payment.pk)
    assert (final.status, final.attempts, final.gateway_reference) == (Status.SUCCEEDED, 1, charge["id"])
    reasons = [f"{e.from_status}>{e.to_status}:{e.reason}" for e in PaymentEvent.objects.filter(payment=payment)]
    assert reasons[-2:] == ["submitting>reconciling:lease_expired", "reconciling>succeeded:charge_found"]


def test_a_gateway_outage_opens_the_circuit_and_every_payment_completes_once_it_is_back(
    engine: Engine, gateway: Gateway, make_payment: MakePayment
) -> None:
    # given a breaker scaled down for a 20 s outage (the defaults: 30 s window, 20 calls, 30 s open)
    breaker = {
        **FAST,
        "RETRY_MAX_ATTEMPTS": "20",
        "CIRCUIT_WINDOW_SECONDS": "5",
        "CIRCUIT_MIN_CALLS": "5",
        "CIRCUIT_FAILURE_RATIO": "0.5",
        "CIRCUIT_OPEN_SECONDS": "3",
        "CIRCUIT_PROBE_SIZE": "2",
    }
    engine.start_worker(**breaker)
    engine.start_beat()
    before = injected(gateway)

    # when the gateway fails everything for 20 s while payments come due, before and during the outage
    gateway.set_faults(error_rate=1.0)
    outage_started = time.monotonic()
    payments = [make_payment(due_in=2) for _ in range(30)] + [make_payment(due_in=10) for _ in range(20)]
    ids = [p.pk for p in payments]
    wait_for(
        lambda: AuditEvent.objects.filter(action="gateway_circuit.opened").exists(),
        timeout=15,
        what="the circuit to open",
    )
    time.sleep(max(0.0, 20 - (time.monotonic() - outage_started)))
    during = injected(gateway)["error"] - before["error"]
    gateway.clear_faults()

    # then all complete afterwards, each charged once
    final = wait_terminal(ids, timeout=60)
    for payment_id in ids:
        assert final[payment_id].status == Status.SUCCEEDED
        assert len(gateway.charges(payment_id)) == 1
    # the circuit opened, probed and closed (its state changes are in the audit trail) ...
    history = list(
        AuditEvent.objects.filter(target_type="payments.gatewaycircuit", target_id="sandbox")
        .order_by("at", "id")
        .values_list("action", flat=True)
    )
    assert history[0] == "gateway_circuit.opened"
    assert "gateway_circuit.half_opened" in history
    assert history[-1] == "gateway_circuit.closed"
    # ... and kept the gateway from being hammered: without it, 50 payments retrying every ≤ 3 s for 20 s
    # would have made hundreds of calls; with it, the first batch or two, then probes of 2 every ~3 s
    assert during < 120, (during, history)
    deferred = PaymentEvent.objects.filter(payment_id__in=ids, reason="gateway_unavailable").count()
    print(f"outage: {during} calls failed in 20 s, {deferred} deferrals; circuit {history}")


def test_a_poison_message_is_dead_lettered_and_recorded_and_a_dead_lettered_payment_is_redriven(
    engine: Engine, gateway: Gateway, make_payment: MakePayment
) -> None:
    # given a worker that gives up after one refused attempt
    engine.start_worker(**FAST, RETRY_MAX_ATTEMPTS="1")
    engine.start_beat()

    # when poison reaches the queues: an execution task whose argument is not a payment id (it raises),
    # and a message naming a task nobody knows
    named = "0193a0c4-0000-7000-8000-000000000001"
    celery_app.send_task(execution.EXECUTE_TASK, args=[["not-a-uuid"]])
    celery_app.send_task("payments.tasks.no_such_task", args=[[named]], queue="execution", routing_key="execution")

    # then the worker rejected both into the dead-letter queue, and drain_dead_letters records them
    def drained() -> list[DeadLetter]:
        call_command("drain_dead_letters", stdout=StringIO())
        rows = list(DeadLetter.objects.all())
        return rows if len(rows) >= 2 else []

    rows = {row.task_name: row for row in wait_for(drained, timeout=30, interval=0.5, what="two dead letters")}
    failing, unknown = rows[execution.EXECUTE_TASK], rows["payments.tasks.no_such_task"]
    assert (failing.reason, failing.queue, failing.payment_ids) == ("rejected", "execution", [])
    assert (unknown.reason, unknown.queue, unknown.payment_ids) == ("rejected", "execution", [named])
    assert failing.task_id
    assert failing.body_bytes > 0
    call_command("drain_dead_letters", stdout=StringIO())  # nothing left, nothing recorded twice
    assert DeadLetter.objects.count() == 2

    # and a payment whose only attempt was refused is dead-lettered ...
    gateway.set_faults(error_rate=1.0)
    payment = make_payment(due_in=1)
    wait_for(
        lambda: Payment.objects.filter(pk=payment.pk, status=Status.DEAD_LETTERED).exists(),
        timeout=20,
        what="the payment to be dead-lettered",
    )
    payment.refresh_from_db()
    assert payment.dead_letter_reason == "retries_exhausted"
    assert gateway.charges(payment.pk) == []

    # ... and once the gateway is back, `manage.py dead_letters retry` re-drives it to a single charge
    gateway.clear_faults()
    call_command(
        "dead_letters", "retry", str(payment.pk), "--reason", "drill", "--actor", "cli:test", stdout=StringIO()
    )
    final = wait_terminal([payment.pk], timeout=20)[payment.pk]
    [charge] = gateway.charges(payment.pk)
    assert (final.status, final.attempts, final.gateway_reference) == (Status.SUCCEEDED, 2, charge["id"])
    assert charge["idempotency_key"] == final.gateway_idempotency_key(2)
    assert AuditEvent.objects.filter(actor="cli:test", action="payment.dead_letter_redriven").count() == 1
