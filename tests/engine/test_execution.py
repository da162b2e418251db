"""The engine's services in this process, against the real sandbox gateway (a subprocess) and PostgreSQL."""

from __future__ import annotations

import importlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from django.apps import apps as django_apps
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from config.celery import DEAD_LETTER_EXCHANGE, build_task_queues, dead_letter_queue
from config.celery import app as celery_app
from payments.engine import execution
from payments.engine.execution import (
    ExecutionReport,
    TransactionOpenError,
    group_claims,
    interval_every_period,
    payments_execute,
    payments_reconcile,
    payments_sweep,
    periodic_tasks_ensure,
)
from payments.models import Payment, PaymentEvent
from payments.state_machine import (
    QUERIES,
    SWEEP_LOCK_KEY,
    Claim,
    begin_submissions,
    claim_due_payments,
    claim_waiting_payments,
)
from payments.statuses import Status

from .conftest import Gateway, MakePayment

# The engine refuses to call the gateway inside a transaction, so these tests commit (pytest-django
# flushes the tables after each one).
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("published")]


def dispatched(make_payment: MakePayment, **kwargs: Any) -> Payment:
    payment = make_payment(due_in=kwargs.pop("due_in", -0.5), **kwargs)
    claims = claim_due_payments(lookahead=timedelta(seconds=30), lease=timedelta(seconds=120), limit=100, actor="t")
    assert payment.pk in {c.payment_id for c in claims}
    payment.refresh_from_db()
    return payment


def claimed_for_reconciliation(payment: Payment) -> None:
    """What the sweep does before a reconcile task runs: claim it under a lease."""
    claims = claim_waiting_payments(status=Status.RECONCILING, lease=settings.SUBMIT_LEASE, limit=100)
    assert payment.pk in {c.payment_id for c in claims}


def reasons(payment: Payment) -> list[str]:
    return [f"{e.from_status}>{e.to_status}:{e.reason}" for e in PaymentEvent.objects.filter(payment=payment)]


# --- Execution ------------------------------------------------------------------------------------------


def test_a_due_payment_is_charged_once_with_its_attempt_key(use_gateway: Gateway, make_payment: MakePayment) -> None:
    payment = dispatched(make_payment)

    report = payments_execute([str(payment.pk)])

    assert report == ExecutionReport(submitted=1, recorded=1)
    payment.refresh_from_db()
    [charge] = use_gateway.charges(payment.pk)
    assert charge["idempotency_key"] == payment.gateway_idempotency_key(1)
    assert charge["amount"] == "125.50"
    assert (payment.status, payment.attempts, payment.gateway_reference) == (Status.SUCCEEDED, 1, charge["id"])
    assert payment.executed_at is not None
    assert reasons(payment)[-2:] == ["dispatched>submitting:due", "submitting>succeeded:charged"]

    # a duplicate delivery of the same task does nothing
    assert payments_execute([str(payment.pk)]).skipped == 1
    assert len(use_gateway.charges(payment.pk)) == 1


def test_a_declined_payment_fails_with_the_gateways_reason(use_gateway: Gateway, make_payment: MakePayment) -> None:
    payment = dispatched(make_payment, payment_method="pm_card_decline")

    payments_execute([payment.pk])

    payment.refresh_from_db()
    [charge] = use_gateway.charges(payment.pk)
    assert charge["status"] == "declined"
    assert payment.status == Status.FAILED
    assert payment.failure_code == charge["failure_code"] == "card_declined"
    assert payment.failure_message == charge["failure_message"]


def test_a_refused_attempt_is_retried_with_a_new_key(use_gateway: Gateway, make_payment: MakePayment) -> None:
    # given a gateway that answers 503 without charging
    payment = dispatched(make_payment)
    use_gateway.set_faults(error_rate=1.0)

    payments_execute([payment.pk])

    payment.refresh_from_db()
    assert payment.status == Status.RETRY_SCHEDULED
    assert payment.next_attempt_at is not None
    assert use_gateway.charges(payment.pk) == []

    # when the retry comes due and the gateway is back
    use_gateway.clear_faults()
    Payment.objects.filter(pk=payment.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    report = payments_sweep()
    assert report.retries == 1
    payments_execute([payment.pk])

    # then attempt 2 charges, under its own key, once
    payment.refresh_from_db()
    [charge] = use_gateway.charges(payment.pk)
    assert (payment.status, payment.attempts) == (Status.SUCCEEDED, 2)
    assert charge["idempotency_key"] == payment.gateway_idempotency_key(2)


def test_an_unknown_outcome_is_reconciled_by_lookup_not_by_a_new_key(
    use_gateway: Gateway, make_payment: MakePayment
) -> None:
    # given a gateway that charges and then drops the connection
    payment = dispatched(make_payment)
    use_gateway.set_faults(drop_response_rate=1.0)

    payments_execute([payment.pk])

    payment.refresh_from_db()
    assert (payment.status, payment.attempts) == (Status.RECONCILING, 1)
    assert len(use_gateway.charges(payment.pk)) == 1

    # when reconciliation asks the gateway
    report = payments_reconcile([payment.pk])

    # then the charge it made is found and recorded; nothing is charged again
    assert (report.found, report.resent, report.recorded) == (1, 0, 1)
    payment.refresh_from_db()
    [charge] = use_gateway.charges(payment.pk)
    assert (payment.status, payment.gateway_reference) == (Status.SUCCEEDED, charge["id"])
    assert reasons(payment)[-1] == "reconciling>succeeded:charge_found"


def test_an_attempt_proven_absent_is_resent_with_the_same_key(use_gateway: Gateway, make_payment: MakePayment) -> None:
    # given an attempt whose worker vanished before the gateway saw it
    payment = make_payment(due_in=-1)
    Payment.objects.filter(pk=payment.pk).update(status=Status.RECONCILING, attempts=1, next_attempt_at=timezone.now())
    claimed_for_reconciliation(payment)

    report = payments_reconcile([payment.pk])

    assert (report.found, report.resent, report.recorded) == (0, 1, 1)
    payment.refresh_from_db()
    [charge] = use_gateway.charges(payment.pk)
    assert charge["idempotency_key"] == payment.gateway_idempotency_key(1)
    assert (payment.status, payment.attempts) == (Status.SUCCEEDED, 1)


def test_an_unanswered_resend_keeps_the_key_and_asks_again_later(
    use_gateway: Gateway, make_payment: MakePayment
) -> None:
    payment = make_payment(due_in=-1)
    Payment.objects.filter(pk=payment.pk).update(status=Status.RECONCILING, attempts=1, next_attempt_at=timezone.now())
    claimed_for_reconciliation(payment)
    use_gateway.set_faults(error_rate=1.0)

    report = payments_reconcile([payment.pk])

    assert report.postponed == 1
    payment.refresh_from_db()
    # still reconciling at the same attempt: never a retry with a new key while the old one may charge
    assert (payment.status, payment.attempts) == (Status.RECONCILING, 1)
    assert payment.next_attempt_at is not None
    assert payment.next_attempt_at > timezone.now()


def test_a_worker_stalled_past_its_lease_does_not_send(
    use_gateway: Gateway, make_payment: MakePayment, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a worker that stalls (GC pause, SIGSTOP, slow DNS) between beginning the attempt and the
    # gateway call, long enough for its submission lease to run out
    payment = dispatched(make_payment)

    def begin_then_stall(*args: Any, **kwargs: Any) -> Any:
        start = begin_submissions(*args, **kwargs)
        Payment.objects.filter(pk=payment.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
        return start

    monkeypatch.setattr(execution, "begin_submissions", begin_then_stall)

    report = payments_execute([payment.pk])

    # then it does not send: no charge, the attempt stays submitting for the sweep to reconcile
    assert (report.submitted, report.lease_lost, report.recorded) == (1, 1, 0)
    assert use_gateway.charges(payment.pk) == []
    payment.refresh_from_db()
    assert (payment.status, payment.attempts) == (Status.SUBMITTING, 1)


def test_a_reconciliation_whose_claim_ran_out_does_not_resend(use_gateway: Gateway, make_payment: MakePayment) -> None:
    # given an attempt proven absent, whose reconcile claim has expired (another task may hold it now)
    payment = make_payment(due_in=-1)
    Payment.objects.filter(pk=payment.pk).update(
        status=Status.RECONCILING, attempts=1, lease_expires_at=timezone.now() - timedelta(seconds=1)
    )

    report = payments_reconcile([payment.pk])

    assert (report.resent, report.lease_lost) == (0, 1)
    assert use_gateway.charges(payment.pk) == []


def test_a_late_outcome_of_an_expired_attempt_changes_nothing(use_gateway: Gateway, make_payment: MakePayment) -> None:
    # given an attempt whose lease expired while its worker was stalled: the sweep sent it to reconciliation
    payment = dispatched(make_payment)
    use_gateway.set_faults(latency_ms=0)

    def stalled_charge_many(requests: Any) -> Any:
        Payment.objects.filter(pk=payment.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
        assert payments_sweep().to_reconcile == 1
        from payments.gateways import get_gateway

        return get_gateway().charge_many(requests)

    class Stalled:
        charge_many = staticmethod(stalled_charge_many)

    original = execution._gateway
    execution._gateway = lambda: Stalled()  # type: ignore[assignment,return-value]
    try:
        report = payments_execute([payment.pk])
    finally:
        execution._gateway = original

    # then the zombie's success is fenced off; reconciliation (same key) settles it exactly once
    assert report.recorded == 0
    payment.refresh_from_db()
    assert payment.status == Status.RECONCILING
    payments_reconcile([payment.pk])
    payment.refresh_from_db()
    assert payment.status == Status.SUCCEEDED
    assert len(use_gateway.charges(payment.pk)) == 1


def test_the_gateway_is_never_called_inside_a_transaction(make_payment: MakePayment) -> None:
    payment = dispatched(make_payment)
    with transaction.atomic(), pytest.raises(TransactionOpenError):
        payments_execute([payment.pk])


# --- Sweep -------------------------------------------------------------------------------------------


def test_only_one_sweep_works_at_a_time() -> None:
    # given another process holding the sweep's advisory lock
    db = connection.settings_dict
    with psycopg.connect(
        host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"], dbname=db["NAME"], autocommit=True
    ) as leader:
        assert leader.execute("SELECT pg_try_advisory_lock(%s)", [SWEEP_LOCK_KEY]).fetchone() == (True,)
        # when this process sweeps, it steps aside
        assert payments_sweep().skipped is True
        leader.execute("SELECT pg_advisory_unlock(%s)", [SWEEP_LOCK_KEY])
    # and once the lock is free it works
    assert payments_sweep().skipped is False


def test_a_failed_publish_releases_the_claims_for_the_next_sweep(
    make_payment: MakePayment, monkeypatch: pytest.MonkeyPatch, published: list[tuple[str, Any]]
) -> None:
    payment = make_payment(due_in=5)

    def broker_down(*args: Any, **kwargs: Any) -> int:
        raise ConnectionError("broker down")

    monkeypatch.setattr(execution, "_publish", broker_down)
    with pytest.raises(ConnectionError):
        payments_sweep()

    payment.refresh_from_db()
    assert payment.status == Status.DISPATCHED
    assert payment.lease_expires_at is not None
    assert payment.lease_expires_at <= timezone.now()  # the next sweep re-dispatches it at once

    def publish(task_name: str, groups: Any, **route: Any) -> int:
        published.extend((task_name, group) for group in groups)
        return len(groups)

    monkeypatch.setattr(execution, "_publish", publish)
    assert payments_sweep().redispatched == 1
    assert published[0] == (execution.EXECUTE_TASK, (published[0][1][0], [payment.pk]))


@pytest.mark.django_db
def test_a_failed_publish_of_reconciliations_and_retries_releases_them_and_the_tick_goes_on(
    make_payment: MakePayment, monkeypatch: pytest.MonkeyPatch, published: list[tuple[str, Any]]
) -> None:
    # given a reconciliation and a retry waiting, and a payment falling due
    in_doubt = make_payment(due_in=-5)
    Payment.objects.filter(pk=in_doubt.pk).update(status=Status.RECONCILING, attempts=1, next_attempt_at=timezone.now())
    retry = make_payment(due_in=-5)
    Payment.objects.filter(pk=retry.pk).update(
        status=Status.RETRY_SCHEDULED, attempts=1, next_attempt_at=timezone.now()
    )
    due = make_payment(due_in=5)
    calls: list[str] = []

    def broker_refuses_waiting_work(task_name: str, groups: Any, **route: Any) -> int:
        calls.append(task_name)
        if len(calls) <= 2:  # the reconciliation's and the retry's publish fail
            raise ConnectionError("broker down")
        published.extend((task_name, group) for group in groups)
        return len(groups)

    monkeypatch.setattr(execution, "_publish", broker_refuses_waiting_work)

    # when the tick runs
    report = payments_sweep()

    # then it carried on: the due payment was claimed and its execution published
    assert report.dispatched == 1
    assert [ids for _, (_, ids) in published] == [[due.pk]]
    # and the two claims were released at once, for the next tick (not held for their full lease)
    for payment in (in_doubt, retry):
        payment.refresh_from_db()
        assert payment.lease_expires_at is not None
        assert payment.lease_expires_at <= timezone.now()
    monkeypatch.setattr(execution, "_publish", lambda task_name, groups, **route: len(groups))
    again = payments_sweep()
    assert (again.reconciliations, again.retries) == (1, 1)


def test_a_broker_error_on_an_early_delivery_never_stands_before_the_gateway_call(
    use_gateway: Gateway, make_payment: MakePayment, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a batch with a due payment and one delivered before its due instant
    due = dispatched(make_payment)
    early = dispatched(make_payment, due_in=20)

    def broker_down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(execution, "_republish_early", broker_down)

    # when the early one cannot be re-published
    report = payments_execute([due.pk, early.pk])

    # then the due payment was still charged and recorded
    assert (report.submitted, report.recorded, report.not_yet_due) == (1, 1, 1)
    due.refresh_from_db()
    assert due.status == Status.SUCCEEDED
    assert len(use_gateway.charges(due.pk)) == 1
    # and the early one's lease was released for the next sweep to publish it again
    early.refresh_from_db()
    assert early.status == Status.DISPATCHED
    assert early.lease_expires_at is not None
    assert early.lease_expires_at <= timezone.now()


def test_claims_are_grouped_by_due_instant_with_the_latest_eta() -> None:
    t0 = datetime(2027, 1, 1, tzinfo=UTC)
    offsets = [0, 50, 150, 400, 420, 430, 440]
    claims = [Claim(uuid.UUID(int=i), t0 + timedelta(milliseconds=ms)) for i, ms in enumerate(offsets)]

    groups = group_claims(claims, batch_size=3, window=timedelta(milliseconds=200))

    assert [(eta - t0, [i.int for i in ids]) for eta, ids in groups] == [
        (timedelta(milliseconds=150), [0, 1, 2]),
        (timedelta(milliseconds=430), [3, 4, 5]),  # 400 is more than 200 ms after 0
        (timedelta(milliseconds=440), [6]),  # the batch size splits the rest
    ]


@pytest.mark.django_db  # rolled back: no flush of a million rows
def test_the_sweep_query_uses_the_partial_index_and_ignores_the_backlog(payer: Any) -> None:
    def plan() -> tuple[str, int]:
        with transaction.atomic():
            sid = transaction.savepoint()
            with connection.cursor() as cursor:
                params: dict[str, Any] = {
                    "lookahead": timedelta(seconds=30),
                    "limit": 500,
                    "lease": timedelta(seconds=120),
                    "actor": "x",
                }
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + QUERIES["claim_due"], params)
                document = cursor.fetchone()[0]
            transaction.savepoint_rollback(sid)
        data = json.loads(document) if isinstance(document, str) else document
        root = data[0]["Plan"]
        return json.dumps(root), root.get("Shared Hit Blocks", 0) + root.get("Shared Read Blocks", 0)

    _, empty_buffers = plan()

    # one million payments waiting for tomorrow and later, inserted in one statement
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO payments_payment (
                id, owner_id, amount_minor, currency, payee_name, payee_account, payee_account_last4,
                description, metadata, payment_method, scheduled_for, time_zone, scheduled_local, status,
                attempts, gateway_reference, failure_code, failure_message, created_at, updated_at)
            SELECT gen_random_uuid(), %(owner)s, 1000, 'EUR', 'p', 'acct', '1234', '', '{}'::jsonb, 'pm_card_visa',
                   now() + interval '1 day' + g * interval '1 second', 'UTC', '', 'scheduled',
                   0, '', '', '', now(), now()
            FROM generate_series(1, 1000000) AS g
            """,
            {"owner": payer.pk},
        )
        cursor.execute("ANALYZE payments_payment")
    full_plan, full_buffers = plan()

    assert "payment_due_sweep_idx" in full_plan
    assert "Seq Scan" not in full_plan
    # the same few index pages whatever the backlog (a sequential scan would read ~20,000)
    assert full_buffers <= empty_buffers + 5, (empty_buffers, full_buffers)
    assert full_buffers < 20


# --- Schedules and Celery configuration ---------------------------------------------------------------------


@pytest.mark.django_db
def test_the_data_migration_creates_the_beat_schedule(settings: Any) -> None:
    migration = importlib.import_module("payments.migrations.0002_execution_schedules")
    PeriodicTask.objects.all().delete()
    settings.SWEEP_INTERVAL_SECONDS = 0.5

    migration.create_schedules(django_apps, None)

    sweep = PeriodicTask.objects.get(task="payments.tasks.sweep_due_payments_task")
    assert (sweep.interval.every, sweep.interval.period) == (500_000, IntervalSchedule.MICROSECONDS)
    assert sweep.expire_seconds == 1
    purge = PeriodicTask.objects.get(task="payments.tasks.idempotency_purge_task")
    assert (purge.interval.every, purge.interval.period) == (1, IntervalSchedule.HOURS)


@pytest.mark.django_db
def test_ensure_schedules_follows_the_configured_interval(settings: Any) -> None:
    settings.SWEEP_INTERVAL_SECONDS = 2
    periodic_tasks_ensure()
    periodic_tasks_ensure()  # idempotent
    sweep = PeriodicTask.objects.get(name=execution.SWEEP_PERIODIC_TASK_NAME)
    assert (sweep.interval.every, sweep.interval.period, sweep.expire_seconds) == (2, "seconds", 4)
    # sweep, idempotency purge, dead-letter drain (docs/operations.md)
    assert PeriodicTask.objects.filter(task__startswith="payments.tasks.").count() == 3


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("queue_type", "due_in", "expected"),
    [
        ("quorum", 5.0, "eta"),
        ("quorum", 0.4, "countdown"),  # native delayed delivery refuses delays under a second
        ("classic", 0.4, "eta"),
        ("quorum", -1.0, None),  # overdue: now
    ],
)
def test_delivery_options_suit_the_queue_type(
    settings: Any, queue_type: str, due_in: float, expected: str | None
) -> None:
    settings.BROKER_IS_AMQP = True
    settings.BROKER_QUEUE_TYPE = queue_type
    eta = timezone.now() + timedelta(seconds=due_in)
    options = execution.delivery_options(eta)
    assert list(options) == ([expected] if expected else [])
    if expected == "countdown":
        assert options["countdown"] == 1


@pytest.mark.django_db
def test_intervals_are_whole_seconds_or_microseconds() -> None:
    assert interval_every_period(1.0) == (1, "seconds")
    assert interval_every_period(0.25) == (250_000, "microseconds")
    with pytest.raises(ValueError, match="positive"):
        interval_every_period(0)


@pytest.mark.django_db
@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
def test_rabbitmq_queues_are_durable_with_a_dead_letter_exchange(queue_type: str) -> None:
    queues = {q.name: q for q in build_task_queues(amqp=True, queue_type=queue_type, delivery_limit=7)}

    assert set(queues) == {"sweep", "execution", "recovery", "housekeeping"}
    for name in ("execution", "recovery", "housekeeping"):
        arguments = queues[name].queue_arguments or {}
        assert queues[name].durable
        assert arguments["x-queue-type"] == queue_type
        assert arguments["x-dead-letter-exchange"] == DEAD_LETTER_EXCHANGE
        assert queues[name].exchange.type == "topic"  # native delayed delivery needs topic
        assert ("x-delivery-limit" in arguments) is (queue_type == "quorum")
    # stale sweep ticks expire by design: dropped, not dead-lettered
    assert "x-dead-letter-exchange" not in (queues["sweep"].queue_arguments or {})
    assert dead_letter_queue(queue_type).exchange.name == DEAD_LETTER_EXCHANGE


@pytest.mark.django_db
def test_the_embedded_transport_gets_plain_queues() -> None:
    for queue in build_task_queues(amqp=False):
        assert not queue.queue_arguments


@pytest.mark.django_db
def test_tasks_are_routed_by_name_and_acknowledged_late() -> None:
    import payments.engine.tasks  # noqa: F401 - registers the tasks, as the worker's autodiscovery does

    router = celery_app.amqp.router
    for name, queue in [
        (execution.SWEEP_TASK, "sweep"),
        (execution.EXECUTE_TASK, "execution"),
        (execution.RECONCILE_TASK, "recovery"),
        (execution.IDEMPOTENCY_PURGE_TASK, "housekeeping"),
    ]:
        assert router.route({}, name)["queue"].name == queue
    execute = celery_app.tasks[execution.EXECUTE_TASK]
    assert execute.acks_late
    assert execute.reject_on_worker_lost
    assert celery_app.conf.worker_prefetch_multiplier == 1
    if settings.BROKER_IS_AMQP:
        assert celery_app.conf.broker_transport_options["confirm_publish"] is True


@pytest.mark.django_db
def test_the_idempotency_purge_task_calls_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    from payments import services
    from payments.engine import tasks

    monkeypatch.setattr(services, "idempotency_purge_expired", lambda: 3)
    assert tasks.idempotency_purge_task.run() == 3


@pytest.mark.django_db
def test_a_rejected_execution_message_is_dead_lettered(broker_url: str) -> None:
    from kombu import Connection

    queue_type = settings.BROKER_QUEUE_TYPE
    queues = {q.name: q for q in build_task_queues(amqp=True, queue_type=queue_type)}
    with Connection(broker_url) as conn:
        channel = conn.channel()
        dead_letters = dead_letter_queue(queue_type)(channel)
        dead_letters.declare()
        dead_letters.purge()
        execution_queue = queues["execution"](channel)
        execution_queue.declare()
        execution_queue.purge()
        with conn.Producer(channel) as producer:
            producer.publish({"poison": True}, exchange=execution_queue.exchange, routing_key="execution")

        message = wait_for_message(execution_queue)
        message.reject(requeue=False)

        dead = wait_for_message(dead_letters)
        assert dead.payload == {"poison": True}
        dead.ack()


def wait_for_message(queue: Any, timeout: float = 5.0) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = queue.get(no_ack=False)
        if message is not None:
            return message
        time.sleep(0.05)
    raise AssertionError(f"no message in {queue.name}")


def test_the_operator_commands_run_a_sweep_and_ensure_schedules(make_payment: MakePayment) -> None:
    from io import StringIO

    from django.core.management import call_command

    make_payment(due_in=1)
    out = StringIO()
    call_command("run_sweep_once", stdout=out)
    assert json.loads(out.getvalue())["dispatched"] == 1

    call_command("ensure_schedules", stdout=StringIO())
    assert PeriodicTask.objects.filter(name=execution.SWEEP_PERIODIC_TASK_NAME).exists()


def test_a_reconcile_task_that_always_crashes_climbs_the_ladder_and_dead_letters_at_the_deadline(
    make_payment: MakePayment, monkeypatch: pytest.MonkeyPatch
) -> None:
    from payments.engine.tasks import reconcile_payments_task

    class BrokenAdapter:
        def find_charge(self, key: str) -> None:
            raise RuntimeError("misconfigured adapter")

    monkeypatch.setattr(execution, "_gateway", BrokenAdapter)
    # given a payment in doubt, claimed for reconciliation
    payment = make_payment(due_in=-1)
    Payment.objects.filter(pk=payment.pk).update(status=Status.RECONCILING, attempts=1, next_attempt_at=timezone.now())
    claimed_for_reconciliation(payment)

    # when its reconcile task crashes
    with pytest.raises(RuntimeError):
        reconcile_payments_task([str(payment.pk)])

    # then the crash counted as a try: one rung up, asked again later, claim ended
    payment.refresh_from_db()
    assert (payment.status, payment.reconcile_attempts, payment.lease_expires_at) == (Status.RECONCILING, 1, None)
    assert payment.next_attempt_at is not None
    assert payment.next_attempt_at > timezone.now()

    # and once the key's retention deadline has passed, a crash dead-letters it for a person
    Payment.objects.filter(pk=payment.pk).update(
        scheduled_for=timezone.now() - timedelta(days=3), next_attempt_at=timezone.now()
    )
    PaymentEvent.objects.filter(payment=payment).delete()
    claimed_for_reconciliation(payment)
    with pytest.raises(RuntimeError):
        reconcile_payments_task([str(payment.pk)])
    payment.refresh_from_db()
    assert (payment.status, payment.dead_letter_reason) == (Status.DEAD_LETTERED, "needs_operator")
