"""The execution engine: sweep due payments, execute them at the gateway, record outcomes, rescue leases.

The flow (docs/execution.md has the diagram and the reasoning):

1. ``payments_sweep`` (the beat tick, one at a time thanks to an advisory lock)
   claims payments due within the look-ahead window (``scheduled → dispatched``
   with a lease) and, after commit, publishes ``execute_payments_task`` with an
   ETA of the due instant, a few ids per task. It also rescues expired leases
   and hands waiting retries and reconciliations to workers.
2. ``payments_execute`` moves the due ones to ``submitting`` (attempt + 1, the
   fencing token) and commits, calls the gateway outside any transaction with
   the attempt's idempotency key, then records each outcome guarded by
   ``(status, attempt)``.
3. ``payments_reconcile`` settles unknown outcomes: it asks the gateway for
   the attempt's key and re-sends only with the *same* key.

Every status change goes through ``payments.state_machine``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from .currencies import format_minor_units
from .gateways.base import ChargeOutcome, ChargeRecord, ChargeRequest, GatewayLookupError, OutcomeKind
from .models import Payment
from .state_machine import (
    Claim,
    OutcomeWrite,
    begin_submissions,
    claim_due_payments,
    claim_waiting_payments,
    expire_submissions,
    postpone_payments,
    record_outcomes,
    redispatch_expired_payments,
    release_dispatch_leases,
    sweep_leader_lock,
)
from .statuses import Status

if TYPE_CHECKING:
    from .gateways.base import Gateway

logger = logging.getLogger(__name__)

SWEEP_ACTOR = "system:sweep"
WORKER_ACTOR = "system:worker"
RECONCILER_ACTOR = "system:reconciler"

# How many claim batches one sweep run may take: bounds a tick's work after a backlog.
SWEEP_MAX_BATCHES = 20
# Payments due within this window of the first one in a task share the task (and its ETA, the
# last due instant): at most this much lateness is traded for fewer, fuller execution tasks.
EXECUTION_GROUP_WINDOW = timedelta(milliseconds=200)
# Retries of an attempt proven not charged. The failure-handling work replaces this policy
# (full jitter, settings); it lives in ``retry_delay`` only.
RETRY_BASE_DELAY = timedelta(seconds=10)
RETRY_MAX_ATTEMPTS = 5
# When an unknown outcome is asked about (again).
RECONCILE_DELAY = timedelta(seconds=2)
RECONCILE_RETRY_DELAY = timedelta(seconds=15)


class TransactionOpenError(RuntimeError):
    """The gateway must never be called inside a database transaction."""


def _assert_outside_transaction() -> None:
    # A gateway call inside a transaction would hold row locks for the length of an HTTP
    # round trip and, worse, could be rolled back after the money moved.
    if connection.in_atomic_block:
        raise TransactionOpenError("the gateway must be called outside any database transaction")


def _gateway() -> Gateway:
    # This process's adapter: built on first use in each process (prefork children never share
    # a parent's sockets), with keep-alive connections pooled inside.
    from .gateways import get_gateway

    return get_gateway()


def retry_delay(attempt: int, retry_after_seconds: float | None = None) -> timedelta:
    """How long a retryable (proven uncharged) attempt waits before the next one."""
    delay = RETRY_BASE_DELAY
    if retry_after_seconds is not None:
        delay = max(delay, timedelta(seconds=retry_after_seconds))
    return delay


def charge_request(payment: Payment) -> ChargeRequest:
    """The gateway request for the payment's current attempt, keyed by (payment, attempt)."""
    return ChargeRequest(
        payment_id=str(payment.pk),
        idempotency_key=payment.gateway_idempotency_key(payment.attempts),
        amount=Decimal(format_minor_units(payment.amount_minor, payment.currency)),
        currency=payment.currency,
        payment_method=payment.payment_method,
    )


# --- Sweep ----------------------------------------------------------------------


@dataclass
class SweepReport:
    skipped: bool = False  # another sweep holds the lock
    dispatched: int = 0  # scheduled → dispatched
    redispatched: int = 0  # dispatched whose lease expired, published again
    to_reconcile: int = 0  # submitting whose lease expired → reconciling
    retries: int = 0  # retry_scheduled handed to workers
    reconciliations: int = 0  # reconciling handed to workers
    tasks_published: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def group_claims(
    claims: Sequence[Claim], *, batch_size: int, window: timedelta = EXECUTION_GROUP_WINDOW
) -> list[tuple[datetime, list[uuid.UUID]]]:
    """Split claims into (eta, ids) groups: due within ``window`` of each other, at most ``batch_size`` ids.

    The ETA is the latest due instant of the group, so no payment of it is delivered early.
    """
    groups: list[tuple[datetime, list[uuid.UUID]]] = []
    first_due: datetime | None = None
    current: list[uuid.UUID] = []
    last_due: datetime | None = None
    for claim in sorted(claims, key=lambda c: c.due_at):
        if current and (len(current) >= batch_size or claim.due_at - first_due > window):  # type: ignore[operator]
            groups.append((last_due, current))  # type: ignore[arg-type]
            current = []
        if not current:
            first_due = claim.due_at
        current.append(claim.payment_id)
        last_due = claim.due_at
    if current:
        groups.append((last_due, current))  # type: ignore[arg-type]
    return groups


def _native_delayed_delivery() -> bool:
    return bool(settings.BROKER_IS_AMQP and settings.BROKER_QUEUE_TYPE == "quorum")


def delivery_options(eta: datetime | None) -> dict[str, Any]:
    """``apply_async`` timing for a task due at ``eta``.

    Celery's native delayed delivery (quorum queues) delays in whole seconds and
    refuses a delay under one second (``ValueError``); such a task is delayed by one
    second instead of being delivered early and bounced.
    """
    if eta is None:
        return {}
    remaining = (eta - timezone.now()).total_seconds()
    if remaining <= 0:
        return {}
    if remaining < 1 and _native_delayed_delivery():
        return {"countdown": 1}
    return {"eta": eta}


def _publish(task_name: str, groups: Sequence[tuple[datetime | None, list[uuid.UUID]]]) -> int:
    """Publish one task per group over one producer (publisher confirms on RabbitMQ)."""
    from config.celery import app

    published = 0
    with app.producer_or_acquire() as producer:
        for eta, ids in groups:
            app.send_task(task_name, args=[[str(i) for i in ids]], producer=producer, **delivery_options(eta))
            published += 1
    return published


def publish_executions(claims: Sequence[Claim]) -> int:
    """After commit: one execution task per group of claims, with the ETA of its due instant.

    If the broker refuses, the claims' dispatch leases are expired at once so the
    next sweep publishes them again (instead of waiting out the lease).
    """
    if not claims:
        return 0
    groups = group_claims(claims, batch_size=settings.EXECUTION_BATCH_SIZE)
    try:
        return _publish(EXECUTE_TASK, groups)
    except Exception:
        logger.exception("sweep: publishing %s execution tasks failed; releasing their leases", len(groups))
        release_dispatch_leases([claim.payment_id for claim in claims])
        raise


def payments_sweep(*, max_batches: int = SWEEP_MAX_BATCHES) -> SweepReport:
    """One tick: rescue expired leases, hand out due retries/reconciliations, claim due payments.

    Only one sweep works at a time (``sweep_leader_lock``); any other returns
    ``skipped``. Each batch is its own short transaction, and its tasks are
    published only after it committed.
    """
    report = SweepReport()
    batch_size = settings.SWEEP_BATCH_SIZE
    with sweep_leader_lock() as leader:
        if not leader:
            report.skipped = True
            return report

        # An attempt whose worker vanished: its outcome is unknown, never re-send with a new key.
        report.to_reconcile = len(expire_submissions(limit=batch_size, actor=SWEEP_ACTOR))

        reconciliations = claim_waiting_payments(
            status=Status.RECONCILING, lease=settings.SUBMIT_LEASE, limit=batch_size
        )
        report.reconciliations = len(reconciliations)
        if reconciliations:
            groups = group_claims(reconciliations, batch_size=settings.EXECUTION_BATCH_SIZE, window=timedelta.max)
            report.tasks_published += _publish(RECONCILE_TASK, [(None, ids) for _, ids in groups])

        # A lost execution message (broker restart, purged queue): publish again.
        redispatched = redispatch_expired_payments(lease=settings.DISPATCH_LEASE, limit=batch_size, actor=SWEEP_ACTOR)
        report.redispatched = len(redispatched)
        report.tasks_published += publish_executions(redispatched)

        retries = claim_waiting_payments(status=Status.RETRY_SCHEDULED, lease=settings.DISPATCH_LEASE, limit=batch_size)
        report.retries = len(retries)
        report.tasks_published += publish_executions(retries)

        for _ in range(max_batches):
            claims = claim_due_payments(
                lookahead=settings.SWEEP_LOOKAHEAD,
                lease=settings.DISPATCH_LEASE,
                limit=batch_size,
                actor=SWEEP_ACTOR,
            )
            report.dispatched += len(claims)
            report.tasks_published += publish_executions(claims)
            if len(claims) < batch_size:
                break
    if report.dispatched or report.redispatched or report.to_reconcile or report.retries or report.reconciliations:
        logger.info("sweep %s", report.as_dict())
    return report


# --- Execution --------------------------------------------------------------------


@dataclass
class ExecutionReport:
    submitted: int = 0
    recorded: int = 0
    not_yet_due: int = 0
    skipped: int = 0  # canceled, or already moved on by another delivery

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def outcome_write(payment: Payment, outcome: ChargeOutcome) -> OutcomeWrite:
    """Translate one attempt's gateway outcome into the guarded write that records it."""
    attempt = payment.attempts
    data: dict[str, Any] = {"outcome": str(outcome.kind)}
    if outcome.reference:
        data["gateway_reference"] = outcome.reference
    if outcome.failure_code:
        data["failure_code"] = outcome.failure_code
    if outcome.kind == OutcomeKind.SUCCEEDED:
        return OutcomeWrite(
            payment.pk, attempt, Status.SUCCEEDED, "charged", gateway_reference=outcome.reference, data=data
        )
    if outcome.kind == OutcomeKind.DECLINED:
        return OutcomeWrite(
            payment.pk,
            attempt,
            Status.FAILED,
            "declined",
            gateway_reference=outcome.reference,
            failure_code=outcome.failure_code or "declined",
            failure_message=outcome.failure_message or "The payment was declined.",
            data=data,
        )
    if outcome.needs_operator:
        return OutcomeWrite(
            payment.pk,
            attempt,
            Status.DEAD_LETTERED,
            "needs_operator",
            failure_code=outcome.failure_code,
            failure_message=outcome.failure_message,
            data=data,
        )
    if outcome.kind == OutcomeKind.RETRYABLE:
        # Proven not charged, and this worker held the attempt's only key: a new attempt is safe.
        if attempt >= RETRY_MAX_ATTEMPTS:
            return OutcomeWrite(payment.pk, attempt, Status.DEAD_LETTERED, "retries_exhausted", data=data)
        return OutcomeWrite(
            payment.pk,
            attempt,
            Status.RETRY_SCHEDULED,
            "retryable_failure",
            failure_code=outcome.failure_code,
            next_attempt_in=retry_delay(attempt, outcome.retry_after_seconds),
            data=data,
        )
    # UNKNOWN: may have charged. Only the same key may ever be sent again.
    return OutcomeWrite(
        payment.pk, attempt, Status.RECONCILING, "outcome_unknown", next_attempt_in=RECONCILE_DELAY, data=data
    )


def _republish_early(not_yet_due: Sequence[tuple[uuid.UUID, float]]) -> None:
    """An execution delivered before its due instant (by the database clock): try again then."""
    from config.celery import app

    now = timezone.now()
    with app.producer_or_acquire() as producer:
        for payment_id, seconds in not_yet_due:
            eta = now + timedelta(seconds=seconds + 0.01)  # the database's count of seconds, not our clock
            app.send_task(EXECUTE_TASK, args=[[str(payment_id)]], producer=producer, **delivery_options(eta))


def payments_execute(payment_ids: Sequence[str | uuid.UUID]) -> ExecutionReport:
    """Execute the due ones among ``payment_ids``: submit, call the gateway, record each outcome.

    Idempotent: a payment that is canceled or already past ``dispatched`` is left
    alone, so a redelivered or duplicated task changes nothing.
    """
    _assert_outside_transaction()
    ids = [uuid.UUID(str(i)) for i in payment_ids]
    start = begin_submissions(ids, lease=settings.SUBMIT_LEASE, actor=WORKER_ACTOR)  # committed
    report = ExecutionReport(submitted=len(start.submitting), not_yet_due=len(start.not_yet_due))
    report.skipped = len(ids) - report.submitted - report.not_yet_due
    if start.not_yet_due:
        logger.info("execute: %s payments delivered early, re-published", len(start.not_yet_due))
        _republish_early(start.not_yet_due)
    if not start.submitting:
        return report

    _assert_outside_transaction()
    outcomes = _gateway().charge_many([charge_request(p) for p in start.submitting])
    writes = [outcome_write(p, o) for p, o in zip(start.submitting, outcomes, strict=True)]
    written = record_outcomes(writes, from_status=Status.SUBMITTING, actor=WORKER_ACTOR)
    report.recorded = len(written)
    if len(written) < len(writes):
        # Fenced: the lease expired and the sweep moved the payment on; reconciliation settles it.
        lost = {w.payment_id for w in writes} - set(written)
        logger.warning("execute: outcomes of %s fenced off (lease expired): %s", len(lost), sorted(map(str, lost)))
    return report


# --- Reconciliation -----------------------------------------------------------------


def record_write(payment: Payment, record: ChargeRecord) -> OutcomeWrite:
    """A charge the gateway's ledger holds under the attempt's key is the attempt's outcome."""
    data = {"gateway_reference": record.reference, "found_by": "lookup"}
    expected = charge_request(payment)
    if (
        (record.payment_id and record.payment_id != expected.payment_id)
        or record.amount != expected.amount
        or record.currency != expected.currency
    ):
        # The key names a different charge: never settle a payment on someone else's money.
        return OutcomeWrite(
            payment.pk,
            payment.attempts,
            Status.DEAD_LETTERED,
            "charge_mismatch",
            failure_code="gateway_record_mismatch",
            data=data,
        )
    if record.status == "succeeded":
        return OutcomeWrite(
            payment.pk,
            payment.attempts,
            Status.SUCCEEDED,
            "charge_found",
            gateway_reference=record.reference,
            data=data,
        )
    return OutcomeWrite(
        payment.pk,
        payment.attempts,
        Status.FAILED,
        "decline_found",
        gateway_reference=record.reference,
        failure_code=record.failure_code or "declined",
        failure_message=record.failure_message or "The payment was declined.",
        data=data,
    )


@dataclass
class ReconcileReport:
    found: int = 0
    resent: int = 0
    recorded: int = 0
    postponed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def payments_reconcile(payment_ids: Sequence[str | uuid.UUID]) -> ReconcileReport:
    """Settle attempts whose outcome is unknown: look the attempt's key up; absent → re-send the same key.

    The key is never abandoned: an attempt that was ever in doubt ends only on a
    charge record the gateway holds for that key (succeeded or declined). Any
    other answer leaves it ``reconciling`` and asks again later, because a
    request with that key may still be in flight somewhere.
    """
    _assert_outside_transaction()
    ids = [uuid.UUID(str(i)) for i in payment_ids]
    payments = list(
        Payment.objects.filter(pk__in=ids, status=Status.RECONCILING).only(
            "id", "attempts", "amount_minor", "currency", "payment_method", "status"
        )
    )
    report = ReconcileReport()
    gateway = _gateway()
    writes: list[OutcomeWrite] = []
    resend: list[Payment] = []
    postpone: list[tuple[uuid.UUID, int]] = []
    for payment in payments:
        try:
            record = gateway.find_charge(payment.gateway_idempotency_key(payment.attempts))
        except GatewayLookupError:
            logger.warning("reconcile: lookup failed for %s, will ask again", payment.pk)
            postpone.append((payment.pk, payment.attempts))
            continue
        if record is None:
            resend.append(payment)
        else:
            report.found += 1
            writes.append(record_write(payment, record))
    if resend:
        _assert_outside_transaction()
        report.resent = len(resend)
        outcomes = gateway.charge_many([charge_request(p) for p in resend])
        for payment, outcome in zip(resend, outcomes, strict=True):
            if outcome.kind in (OutcomeKind.SUCCEEDED, OutcomeKind.DECLINED):
                writes.append(outcome_write(payment, outcome))
            else:
                postpone.append((payment.pk, payment.attempts))
    report.recorded = len(record_outcomes(writes, from_status=Status.RECONCILING, actor=RECONCILER_ACTOR))
    report.postponed = postpone_payments(postpone, status=Status.RECONCILING, delay=RECONCILE_RETRY_DELAY)
    logger.info("reconcile %s", report.as_dict())
    return report


# --- Periodic tasks (django-celery-beat) -----------------------------------------------

SWEEP_TASK = "payments.tasks.sweep_due_payments_task"
EXECUTE_TASK = "payments.tasks.execute_payments_task"
RECONCILE_TASK = "payments.tasks.reconcile_payments_task"
IDEMPOTENCY_PURGE_TASK = "payments.tasks.idempotency_purge_task"
SWEEP_PERIODIC_TASK_NAME = "payments: sweep due payments"
IDEMPOTENCY_PURGE_PERIODIC_TASK_NAME = "payments: purge expired idempotency keys"


def interval_every_period(seconds: float) -> tuple[int, str]:
    """An ``IntervalSchedule`` (integer ``every`` of one period) for a number of seconds."""
    if seconds <= 0:
        raise ValueError("an interval must be positive")
    if float(seconds).is_integer():
        return int(seconds), "seconds"
    return round(seconds * 1_000_000), "microseconds"


def periodic_tasks_ensure() -> None:
    """Create or update the beat schedule rows (the data migration does the same at migrate time).

    Idempotent; run by ``manage.py ensure_schedules`` after a change of
    ``SWEEP_INTERVAL_SECONDS``, and by tests after a flush.
    """
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    sweep_every, sweep_period = interval_every_period(settings.SWEEP_INTERVAL_SECONDS)
    sweep_interval, _ = IntervalSchedule.objects.get_or_create(every=sweep_every, period=sweep_period)
    hourly, _ = IntervalSchedule.objects.get_or_create(every=1, period="hours")
    PeriodicTask.objects.update_or_create(
        name=SWEEP_PERIODIC_TASK_NAME,
        defaults={
            "task": SWEEP_TASK,
            "interval": sweep_interval,
            # A tick nobody ran within two intervals is stale: the next one does its work.
            "expire_seconds": max(1, round(2 * settings.SWEEP_INTERVAL_SECONDS)),
            "enabled": True,
            "description": "Claims due payments and publishes their execution (docs/execution.md).",
        },
    )
    PeriodicTask.objects.update_or_create(
        name=IDEMPOTENCY_PURGE_PERIODIC_TASK_NAME,
        defaults={
            "task": IDEMPOTENCY_PURGE_TASK,
            "interval": hourly,
            "expire_seconds": 1800,
            "enabled": True,
            "description": "Deletes Idempotency-Key records past their retention.",
        },
    )
