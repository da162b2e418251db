"""The whole path with real processes: beat → RabbitMQ (ETA) → worker → sandbox gateway → PostgreSQL.

Each test starts its own ``celery worker`` / ``celery beat`` subprocesses on the
pytest-django test database and this session's RabbitMQ vhost, and checks the
gateway's own ledger: the only witness of money moving.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from common.error_codes import ErrorCode, ProblemError
from payments.models import Payment, PaymentEvent
from payments.services import payment_cancel
from payments.statuses import Status

from .conftest import Engine, Gateway, MakePayment, wait_for, wait_terminal

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]


def charged_at(charge: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(charge["created"])


def sleep_until(instant: datetime) -> None:
    time.sleep(max(0.0, (instant - timezone.now()).total_seconds()))


def test_a_payment_is_executed_after_its_due_instant_never_before_and_within_2s(
    engine: Engine, gateway: Gateway, make_payment: MakePayment
) -> None:
    # given a worker and beat running
    engine.start_worker()
    engine.start_beat()

    # when a payment is scheduled three seconds ahead
    payment = make_payment(due_in=3)
    wait_terminal([payment.pk], timeout=15)

    # then it was charged once, after (never before) its due instant, and within two seconds of it
    payment.refresh_from_db()
    assert payment.status == Status.SUCCEEDED, engine.logs()
    [charge] = gateway.charges(payment.pk)
    submitted = PaymentEvent.objects.get(payment=payment, to_status=Status.SUBMITTING).at
    assert payment.scheduled_for <= submitted  # the database clock's view
    assert payment.scheduled_for <= charged_at(charge) <= payment.scheduled_for + timedelta(seconds=2)
    assert payment.gateway_reference == charge["id"]
    timeline = list(PaymentEvent.objects.filter(payment=payment).values_list("to_status", flat=True))
    assert timeline == ["scheduled", "dispatched", "submitting", "succeeded"]


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
def test_both_queue_types_execute_on_time(
    engine: Engine, gateway: Gateway, make_payment: MakePayment, spare_broker_url: str, queue_type: str
) -> None:
    # the default (settings.BROKER_QUEUE_TYPE) is tested above; here each type on a fresh vhost of its own
    settings = {"CELERY_BROKER_URL": spare_broker_url, "BROKER_QUEUE_TYPE": queue_type}
    engine.start_worker(**settings)
    engine.start_beat(**settings)
    payments = [make_payment(due_in=2 + i * 0.3) for i in range(5)]
    wait_for(lambda: "Sending due task" in engine.logs(), timeout=5, what="a first tick")
    payments.append(make_payment(due_in=0.6))  # claimed with less than a second to go

    final = wait_terminal([p.pk for p in payments], timeout=15)

    for payment in payments:
        [charge] = gateway.charges(payment.pk)
        assert final[payment.pk].status == Status.SUCCEEDED
        assert payment.scheduled_for <= charged_at(charge) <= payment.scheduled_for + timedelta(seconds=2)


def test_a_payment_canceled_before_its_due_instant_is_never_charged(
    engine: Engine, gateway: Gateway, make_payment: MakePayment
) -> None:
    engine.start_worker()
    engine.start_beat()
    canceled = make_payment(due_in=2)
    witness = make_payment(due_in=2)
    # claimed and queued by the sweep (dispatched is still cancelable) ...
    wait_for(
        lambda: Payment.objects.filter(pk=canceled.pk, status=Status.DISPATCHED).exists(),
        timeout=10,
        what="the sweep to claim the payment",
    )
    # ... then canceled before it is due
    payment_cancel(payment_id=canceled.pk, actor="test")

    wait_terminal([witness.pk], timeout=15)
    time.sleep(0.5)  # the canceled payment's task ran in the same batch or just after

    canceled.refresh_from_db()
    assert canceled.status == Status.CANCELED
    assert gateway.charges(canceled.pk) == []
    assert len(gateway.charges(witness.pk)) == 1


def test_cancels_racing_the_due_instant_either_win_or_see_exactly_one_charge(
    engine: Engine, gateway: Gateway, make_payment: MakePayment
) -> None:
    # given 50 payments due at the same instant, and a worker slowed a little by the gateway
    engine.start_worker()
    engine.start_beat()
    gateway.set_faults(latency_ms=20)
    due_at = timezone.now() + timedelta(seconds=4)
    payments = [make_payment(due_at=due_at) for _ in range(50)]

    # when 50 cancels are fired around that instant (-100 ms to +500 ms, so both sides win some), from threads
    results: dict[Any, str] = {}
    barrier = threading.Barrier(len(payments))

    def cancel(index: int, payment: Payment) -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")  # connect before the race, not during it
            barrier.wait()
            sleep_until(due_at + timedelta(milliseconds=(index % 13) * 50 - 100))
            try:
                payment_cancel(payment_id=payment.pk, actor="test")
                results[payment.pk] = "canceled"
            except ProblemError as error:
                results[payment.pk] = error.code
        finally:
            connection.close()

    threads = [threading.Thread(target=cancel, args=(i, p)) for i, p in enumerate(payments)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    final = wait_terminal([p.pk for p in payments], timeout=30)

    # then for each: a successful cancel and no charge, or "not cancelable" and exactly one charge
    assert len(results) == len(payments)
    for payment in payments:
        charges = gateway.charges(payment.pk)
        if results[payment.pk] == "canceled":
            assert final[payment.pk].status == Status.CANCELED
            assert charges == []
        else:
            assert results[payment.pk] == ErrorCode.PAYMENT_NOT_CANCELABLE
            assert final[payment.pk].status == Status.SUCCEEDED
            assert len(charges) == 1
    outcomes = list(results.values())
    submissions = PaymentEvent.objects.filter(payment__in=payments, to_status=Status.SUBMITTING)
    first = min(submissions.values_list("at", flat=True), default=None)
    print(
        f"cancel race: {outcomes.count('canceled')} canceled, {len(outcomes) - outcomes.count('canceled')} charged;"
        f" first submission {(first - due_at).total_seconds() if first else None}s after the due instant"
    )


def test_two_beats_never_submit_a_payment_twice(engine: Engine, gateway: Gateway, make_payment: MakePayment) -> None:
    # given two beat processes ticking the same schedule
    engine.start_worker()
    first = engine.start_beat()
    second = engine.start_beat()

    # when payments come due
    payments = [make_payment(due_in=2 + i * 0.05) for i in range(60)]
    final = wait_terminal([p.pk for p in payments], timeout=30)

    # then each was claimed, submitted and charged exactly once
    for payment in payments:
        assert final[payment.pk].status == Status.SUCCEEDED
        assert len(gateway.charges(payment.pk)) == 1
        moves = list(PaymentEvent.objects.filter(payment=payment).values_list("to_status", flat=True))
        assert moves == ["scheduled", "dispatched", "submitting", "succeeded"]
    # and both beats did send ticks (the advisory lock let one sweep work at a time)
    assert "Sending due task" in first.log()
    assert "Sending due task" in second.log()


def test_a_worker_killed_mid_batch_leaves_every_payment_terminal_and_charged_once(
    engine: Engine, gateway: Gateway, make_payment: MakePayment
) -> None:
    # given slow gateway calls, short leases, and a worker about to execute a batch
    # (short leases need short timeouts and look-ahead: a worker refuses leases its work could outlive)
    lease = {
        "SUBMIT_LEASE_SECONDS": "5",
        "DISPATCH_LEASE_SECONDS": "5",
        "GATEWAY_TIMEOUT_SECONDS": "0.75",
        "SWEEP_LOOKAHEAD_SECONDS": "1",
    }
    victim = engine.start_worker(**lease)
    engine.start_beat(**lease)
    gateway.set_faults(latency_ms=300)
    payments = [make_payment(due_in=2) for _ in range(40)]
    ids = [p.pk for p in payments]

    # when the worker is SIGKILLed while its gateway calls are in flight
    wait_for(
        lambda: Payment.objects.filter(pk__in=ids, status=Status.SUBMITTING).exists(),
        timeout=15,
        interval=0.02,
        what="a batch in flight",
    )
    time.sleep(0.1)
    victim.kill_hard()
    in_flight = Payment.objects.filter(pk__in=ids, status=Status.SUBMITTING).count()
    engine.start_worker(**lease)

    # then every payment ends terminal, charged exactly once
    final = wait_terminal(ids, timeout=60)
    assert in_flight > 0
    for payment_id in ids:
        assert final[payment_id].status == Status.SUCCEEDED, engine.logs()
        charges = gateway.charges(payment_id)
        assert len(charges) == 1, charges
        assert charges[0]["id"] == final[payment_id].gateway_reference
    reconciled = PaymentEvent.objects.filter(payment_id__in=ids, to_status=Status.RECONCILING).count()
    print(f"killed with {in_flight} submitting; {reconciled} went through reconciliation")


def test_a_declined_payment_ends_failed_with_the_gateways_reason(
    engine: Engine, gateway: Gateway, make_payment: MakePayment
) -> None:
    engine.start_worker()
    engine.start_beat()
    payment = make_payment(due_in=2, payment_method="pm_card_decline")

    wait_terminal([payment.pk], timeout=15)

    payment.refresh_from_db()
    [charge] = gateway.charges(payment.pk)
    assert charge["status"] == "declined"
    assert payment.status == Status.FAILED
    assert (payment.failure_code, payment.failure_message) == (charge["failure_code"], charge["failure_message"])


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A TCP server that accepts connections and never answers: a gateway whose every request hangs."""
    server = socket.create_server(("127.0.0.1", 0), backlog=256)
    server.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted, _ = server.accept()
            except OSError:
                continue
            held.append(accepted)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for accepted in held:
        accepted.close()
    server.close()


def test_a_due_payment_executes_on_time_while_reconcile_tasks_hang(
    engine: Engine, gateway: Gateway, make_payment: MakePayment, black_hole: str
) -> None:
    # given the Procfile's split: a worker for the sweep and due payments, a recovery process for
    # reconciliations and retries, whose gateway lookups all hang (up to its lookup budget)
    engine.start_worker(queues="sweep,execution,housekeeping")
    engine.start_worker(queues="recovery", GATEWAY_URL=black_hole, GATEWAY_TIMEOUT_SECONDS="20")
    engine.start_beat()
    in_doubt = [make_payment(due_in=3600) for _ in range(30)]  # far ahead: the sweep leaves them alone
    ids = [p.pk for p in in_doubt]
    Payment.objects.filter(pk__in=ids).update(
        status=Status.RECONCILING, attempts=1, scheduled_for=timezone.now(), next_attempt_at=timezone.now()
    )
    wait_for(
        lambda: Payment.objects.filter(pk__in=ids, lease_expires_at__isnull=False).count() == len(ids),
        timeout=15,
        what="the reconciliations claimed and handed to the recovery process",
    )

    # when a payment falls due while they hang
    payment = make_payment(due_in=3)
    final = wait_terminal([payment.pk], timeout=20)[payment.pk]

    # then it was charged on time, once
    assert final.status == Status.SUCCEEDED, engine.logs()
    [charge] = gateway.charges(payment.pk)
    assert payment.scheduled_for <= charged_at(charge) <= payment.scheduled_for + timedelta(seconds=2)
    # and the reconciliations were still hanging meanwhile: nothing settled, nothing re-sent
    assert Payment.objects.filter(pk__in=ids, status=Status.RECONCILING).count() == len(ids)
    assert all(gateway.charges(pk) == [] for pk in ids)
