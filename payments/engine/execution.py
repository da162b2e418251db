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
   the attempt's key and re-sends only with the *same* key, on a ladder bounded
   by the gateway's idempotency-key retention.

What each outcome leads to (retry with backoff, reconcile, fail, dead-letter) is
one table in ``payments.engine.retry_policy``; back-pressure is ``payments.engine.circuit``.
Every status change goes through ``payments.state_machine``.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import connection
from django.db.models.functions import Now
from django.utils import timezone

from common import actors
from payments.currencies import format_minor_units
from payments.gateways.base import ChargeOutcome, ChargeRecord, ChargeRequest, GatewayLookupError, OutcomeKind
from payments.models import Payment, PaymentEvent
from payments.state_machine import (
    SUBMISSION_FIELDS,
    Claim,
    OutcomeWrite,
    Reschedule,
    begin_submissions,
    claim_due_payments,
    claim_waiting_payments,
    defer_payments,
    expire_submissions,
    record_outcomes,
    redispatch_expired_payments,
    release_dispatch_leases,
    reschedule_waiting,
    sweep_leader_lock,
)
from payments.statuses import EventReason, Status

from .circuit import (
    Admission,
    SweepGate,
    circuit_abandon_probe,
    circuit_admit,
    circuit_record,
    circuit_sweep_gate,
)
from .retry_policy import (
    PROCESSING,
    DeadLetterReason,
    Decision,
    Phase,
    RetryBudget,
    decide,
    inconclusive,
    reconcile_deadline,
    reconcile_decision,
    record_decision,
)
from .timing import gateway_work, reconcile_lookup_budget_seconds

if TYPE_CHECKING:
    from payments.gateways.base import Gateway

logger = logging.getLogger(__name__)

SWEEP_ACTOR = actors.system("sweep")
WORKER_ACTOR = actors.system("worker")
RECONCILER_ACTOR = actors.system("reconciler")
# The event reason of a payment held back (still dispatched) while the gateway's circuit is open.
DEFERRED = EventReason.GATEWAY_UNAVAILABLE

# How many claim batches one sweep run may take: bounds a tick's work after a backlog.
SWEEP_MAX_BATCHES = 20
# Payments due within this window of the first one in a task share the task (and its ETA, the
# last due instant): at most this much lateness is traded for fewer, fuller execution tasks.
EXECUTION_GROUP_WINDOW = timedelta(milliseconds=200)
# Retries, reconciliation ladder and what each outcome leads to: ``payments.engine.retry_policy`` (settings
# RETRY_*, RECONCILE_LADDER_SECONDS, GATEWAY_IDEMPOTENCY_RETENTION_HOURS). Back-pressure: ``payments.engine.circuit``.
# Deferred payments come back within this much after the circuit's next probe time, spread out.
DEFER_JITTER_SECONDS = 1.0


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
    from payments.gateways import get_gateway

    return get_gateway()


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
    circuit_open: bool = False  # the gateway's circuit is not closed: nothing, or only a probe's worth, handed out

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


def _publish(
    task_name: str, groups: Sequence[tuple[datetime | None, list[uuid.UUID]]], *, queue: str | None = None
) -> int:
    """Publish one task per group over one producer (publisher confirms on RabbitMQ); ``queue`` overrides the route."""
    from config.celery import app

    route: dict[str, Any] = {} if queue is None else {"queue": queue, "routing_key": queue}
    published = 0
    with app.producer_or_acquire() as producer:
        for eta, ids in groups:
            app.send_task(task_name, args=[[str(i) for i in ids]], producer=producer, **route, **delivery_options(eta))
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


def _publish_waiting(task_name: str, claims: Sequence[Claim]) -> int:
    """Publish the tasks for claimed retries or reconciliations; if the broker refuses, end their leases
    (the next tick hands them out again) and let the tick carry on with the due payments."""
    if not claims:
        return 0
    from config.celery import RECOVERY_QUEUE

    if task_name == RECONCILE_TASK:
        groups = group_claims(claims, batch_size=settings.EXECUTION_BATCH_SIZE, window=timedelta.max)
        timed: list[tuple[datetime | None, list[uuid.UUID]]] = [(None, ids) for _, ids in groups]
    else:
        timed = list(group_claims(claims, batch_size=settings.EXECUTION_BATCH_SIZE))
    try:
        # Both go to the recovery queue: its own consumer, so they never hold up due payments.
        return _publish(task_name, timed, queue=RECOVERY_QUEUE)
    except Exception:
        logger.exception("sweep: publishing %s tasks for %s claims failed; releasing them", task_name, len(claims))
        release_dispatch_leases([claim.payment_id for claim in claims])
        return 0


def _gateway_name() -> str:
    """The circuit's key: the configured backend (no adapter needs to be built to know it)."""
    return str(settings.GATEWAY_BACKEND).strip().lower()


def payments_sweep(*, max_batches: int = SWEEP_MAX_BATCHES) -> SweepReport:
    """One tick: rescue expired leases, hand out due retries/reconciliations, claim due payments.

    Only one sweep works at a time (``sweep_leader_lock``); any other returns
    ``skipped``. Each batch is its own short transaction, and its tasks are
    published only after it committed. While the gateway's circuit is open it
    hands out nothing that would call the gateway: due payments stay
    ``scheduled`` (cancelable), retries and reconciliations wait in PostgreSQL.
    """
    report = SweepReport()
    batch_size = settings.SWEEP_BATCH_SIZE
    with sweep_leader_lock() as leader:
        if not leader:
            report.skipped = True
            return report

        # An attempt whose worker vanished: its outcome is unknown, never re-send with a new key.
        report.to_reconcile = len(expire_submissions(limit=batch_size, actor=SWEEP_ACTOR))

        gate = circuit_sweep_gate(_gateway_name())
        if gate != SweepGate.CLOSED:
            report.circuit_open = True
        if gate == SweepGate.BLOCKED:
            return report
        if gate == SweepGate.PROBE:
            # Only a probe's worth: whatever the probe batch does not take is deferred again at once.
            batch_size, max_batches = max(1, settings.CIRCUIT_PROBE_SIZE), 1

        reconciliations = claim_waiting_payments(
            status=Status.RECONCILING, lease=settings.SUBMIT_LEASE, limit=batch_size
        )
        report.reconciliations = len(reconciliations)
        report.tasks_published += _publish_waiting(RECONCILE_TASK, reconciliations)

        # A lost execution message (broker restart, purged queue), or a payment deferred while the
        # circuit was open: publish again.
        redispatched = redispatch_expired_payments(lease=settings.DISPATCH_LEASE, limit=batch_size, actor=SWEEP_ACTOR)
        report.redispatched = len(redispatched)
        report.tasks_published += publish_executions(redispatched)

        retries = claim_waiting_payments(status=Status.RETRY_SCHEDULED, lease=settings.DISPATCH_LEASE, limit=batch_size)
        report.retries = len(retries)
        report.tasks_published += _publish_waiting(EXECUTE_TASK, retries)

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
    deferred: int = 0  # held back, no attempt begun: the gateway's circuit is open
    lease_lost: int = 0  # begun, but not sent: the lease no longer covered the call (reconciled later)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def retry_budget(payment: Payment) -> RetryBudget:
    """Attempts and age count from the due instant, or from an operator's last re-drive."""
    return RetryBudget(
        attempt=payment.attempts,
        first_attempt=payment.redrive_attempt,
        started_at=payment.redriven_at or payment.scheduled_for,
    )


def decision_write(payment: Payment, decision: Decision) -> OutcomeWrite:
    """The guarded write of a decision about the payment's current attempt."""
    return OutcomeWrite(
        payment.pk,
        payment.attempts,
        decision.to_status,
        decision.reason,
        gateway_reference=decision.gateway_reference,
        failure_code=decision.failure_code,
        failure_message=decision.failure_message,
        next_attempt_in=decision.next_attempt_in,
        data=dict(decision.data or {}),
        dead_letter_reason=decision.dead_letter_reason,
    )


def outcome_write(payment: Payment, outcome: ChargeOutcome, *, now: datetime | None = None) -> OutcomeWrite:
    """Translate one attempt's gateway outcome into the guarded write that records it (``retry_policy``)."""
    decision = decide(outcome, phase=Phase.SUBMIT, budget=retry_budget(payment), now=now or timezone.now())
    if decision.to_status == Status.DEAD_LETTERED and outcome.needs_operator:
        # Loudly: a configuration fault (e.g. Stripe requires_capture holds the payer's funds uncaptured).
        logger.error("payment %s needs an operator: %s", payment.pk, outcome.detail)
    return decision_write(payment, decision)


def _is_gateway_failure(outcome: ChargeOutcome) -> bool:
    """What the circuit breaker counts: the gateway is unwell, not the payment, our request, or a slow method."""
    return (
        outcome.kind in (OutcomeKind.RETRYABLE, OutcomeKind.UNKNOWN)
        and not outcome.needs_operator
        and not outcome.in_progress
    )


def _defer_delay(admission: Admission) -> timedelta:
    # Spread the deferred ones so they do not all come back in the same instant.
    return (admission.retry_in or timedelta(seconds=1)) + timedelta(seconds=random.uniform(0, DEFER_JITTER_SECONDS))


def _covered_by_lease(payments: Sequence[Payment], *, status: str) -> tuple[list[Payment], list[Payment]]:
    """Split claims into those whose lease still covers the gateway call, by the database clock, and the rest.

    Checked right before the call: a worker stalled since its claim (GC pause, SIGSTOP, slow DNS) must not
    send on a lease that ran out, or would run out mid-call, while another worker may hold the payment.
    The rest are left as they are: their expired lease brings them to reconciliation under the same key.
    """
    if not payments:
        return [], []
    call = timedelta(seconds=gateway_work().batch_seconds(len(payments)))
    covered = set(
        Payment.objects.filter(
            pk__in=[p.pk for p in payments], status=status, lease_expires_at__gte=Now() + call
        ).values_list("pk", "attempts")
    )
    keep = [p for p in payments if (p.pk, p.attempts) in covered]
    lost = [p for p in payments if (p.pk, p.attempts) not in covered]
    if lost:
        logger.warning(
            "lease no longer covers the gateway call for %s payments: not sent %s",
            len(lost),
            sorted(str(p.pk) for p in lost),
        )
    return keep, lost


def _fault_pause_after_gateway() -> None:
    """FAULT INJECTION (tests only; inert unless PAYMENTS_FAULT_PAUSE_AFTER_GATEWAY_SECONDS is set).

    Holds the worker between the gateway's answer and the database write, so a test can kill it
    exactly where money has moved and nothing is recorded yet.
    """
    pause = float(settings.FAULT_PAUSE_AFTER_GATEWAY_SECONDS or 0)
    if pause > 0:
        logger.warning("FAULT INJECTION: pausing %ss after the gateway answered, before recording", pause)
        time.sleep(pause)


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
    alone, so a redelivered or duplicated task changes nothing. While the gateway's
    circuit is open the payments are deferred before any attempt begins.
    """
    _assert_outside_transaction()
    ids = [uuid.UUID(str(i)) for i in payment_ids]
    report = ExecutionReport()
    circuit = _gateway_name()
    admission = circuit_admit(circuit, len(ids))
    if admission.allowed < len(ids):
        held, ids = ids[admission.allowed :], ids[: admission.allowed]
        report.deferred = len(defer_payments(held, delay=_defer_delay(admission), actor=WORKER_ACTOR, reason=DEFERRED))
        logger.info("execute: circuit %s not closed, %s payments deferred", circuit, report.deferred)
    if not ids:
        return report
    start = begin_submissions(ids, lease=settings.SUBMIT_LEASE, actor=WORKER_ACTOR)  # committed
    report.submitted, report.not_yet_due = len(start.submitting), len(start.not_yet_due)
    report.skipped = len(ids) - report.submitted - report.not_yet_due
    try:
        # Nothing between the committed begin and its gateway call: the early ones wait for after it.
        return _submit(start.submitting, report, circuit=circuit, admission=admission)
    finally:
        _republish_early_or_release(start.not_yet_due)


def _republish_early_or_release(not_yet_due: Sequence[tuple[uuid.UUID, float]]) -> None:
    """Re-publish early deliveries for their due instant; if the broker refuses, end their dispatch
    leases so the next sweep publishes them again (never raised: the batch's outcomes are recorded)."""
    if not not_yet_due:
        return
    logger.info("execute: %s payments delivered early, re-published", len(not_yet_due))
    try:
        _republish_early(not_yet_due)
    except Exception:
        logger.exception("execute: re-publishing %s early payments failed; releasing their leases", len(not_yet_due))
        release_dispatch_leases([payment_id for payment_id, _ in not_yet_due])


def _submit(
    submitting: list[Payment], report: ExecutionReport, *, circuit: str, admission: Admission
) -> ExecutionReport:
    """Send the begun attempts whose lease still covers the call, record each outcome, report to the circuit."""
    _assert_outside_transaction()
    sending, lost = _covered_by_lease(submitting, status=Status.SUBMITTING)
    report.lease_lost = len(lost)
    if not sending:
        if admission.probe:
            circuit_abandon_probe(circuit)
        return report
    outcomes = _gateway().charge_many([charge_request(p) for p in sending])
    _fault_pause_after_gateway()
    now = timezone.now()
    writes = [outcome_write(p, o, now=now) for p, o in zip(sending, outcomes, strict=True)]
    written = record_outcomes(writes, from_status=Status.SUBMITTING, actor=WORKER_ACTOR)
    report.recorded = len(written)
    if len(written) < len(writes):
        # Fenced: the lease expired and the sweep moved the payment on; reconciliation settles it.
        fenced = {w.payment_id for w in writes} - set(written)
        logger.warning("execute: outcomes of %s fenced off (lease expired): %s", len(fenced), sorted(map(str, fenced)))
    circuit_record(
        circuit,
        calls=len(outcomes),
        failures=sum(1 for o in outcomes if _is_gateway_failure(o)),
        probe=admission.probe,
    )
    return report


# --- Reconciliation -----------------------------------------------------------------


def record_write(payment: Payment, record: ChargeRecord, *, now: datetime | None = None) -> OutcomeWrite:
    """A charge the gateway's ledger holds under the attempt's key is the attempt's outcome."""
    expected = charge_request(payment)
    decision = record_decision(
        record,
        payment_id=expected.payment_id,
        amount=expected.amount,
        currency=expected.currency,
        started_at=retry_budget(payment).started_at,
        now=now or timezone.now(),
    )
    return decision_write(payment, decision)


def first_submitted_at(payments: Sequence[Payment]) -> dict[uuid.UUID, datetime]:
    """When each payment's current attempt first went to the gateway (its key's age), from the timeline.

    Falls back to the due instant: no attempt is submitted before it, so the key can only be younger.
    """
    wanted = {p.pk: p.attempts for p in payments}
    first: dict[uuid.UUID, datetime] = {p.pk: p.scheduled_for for p in payments}
    found: dict[uuid.UUID, datetime] = {}
    events = PaymentEvent.objects.filter(payment_id__in=list(wanted), to_status=Status.SUBMITTING)
    for payment_id, attempt, at in events.values_list("payment_id", "attempt", "at"):
        if wanted.get(payment_id) == attempt and (payment_id not in found or at < found[payment_id]):
            found[payment_id] = at
    first.update(found)
    return first


@dataclass
class Lookup:
    record: ChargeRecord | None = None
    failure: str | None = None  # the gateway could not be asked, or did not answer within the budget
    reported: bool = False  # the failure was already recorded in the circuit, as it happened


def _look_up(
    gateway: Gateway, payments: Sequence[Payment], *, circuit: str, report_failures: bool
) -> dict[Any, Lookup]:
    """Every payment's attempt key looked up concurrently, within the lookup budget of the task's lease.

    The budget (``timing.reconcile_lookup_budget_seconds``: the lease minus a re-send's worst case and
    a margin) makes the task's work fit its lease by construction: a lookup still unanswered then counts
    as failed (asked again on the ladder), so the re-sends that follow still fit. With
    ``report_failures`` each failure is recorded in the circuit as it happens, not after the batch.
    A lookup that raises anything but ``GatewayLookupError`` (a bug) is raised here.
    """
    budget = max(0.0, reconcile_lookup_budget_seconds())
    results: dict[Any, Lookup] = {}
    pool = ThreadPoolExecutor(max_workers=min(len(payments), gateway_work().concurrency), thread_name_prefix="lookup")
    try:
        futures = {
            pool.submit(gateway.find_charge, payment.gateway_idempotency_key(payment.attempts)): payment.pk
            for payment in payments
        }
        try:
            for future in as_completed(futures, timeout=budget):
                payment_id = futures[future]
                try:
                    results[payment_id] = Lookup(record=future.result())
                except GatewayLookupError as exc:
                    if report_failures:
                        circuit_record(circuit, calls=1, failures=1)
                    results[payment_id] = Lookup(failure=str(exc), reported=report_failures)
        except FuturesTimeout:
            pass
        for payment_id in futures.values():
            if payment_id not in results:
                if report_failures:
                    circuit_record(circuit, calls=1, failures=1)
                results[payment_id] = Lookup(failure=f"no answer within {budget:g} s", reported=report_failures)
    finally:
        # Unanswered lookups are abandoned (each ends at its HTTP timeout); they change nothing.
        pool.shutdown(wait=False, cancel_futures=True)
    return results


@dataclass
class ReconcileReport:
    found: int = 0
    resent: int = 0
    recorded: int = 0
    postponed: int = 0
    deferred: int = 0  # not asked: the gateway's circuit is open (no rung climbed)
    dead_lettered: int = 0  # the key's retention ran out without an answer
    lease_lost: int = 0  # not re-sent: the claim's lease no longer covered the call (claimed again later)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def payments_reconcile(payment_ids: Sequence[str | uuid.UUID]) -> ReconcileReport:
    """Settle attempts whose outcome is unknown: look the attempt's key up; absent → re-send the same key.

    The key is never abandoned: an attempt that was ever in doubt ends only on a
    charge record the gateway holds for that key (succeeded or declined). Any
    other answer leaves it ``reconciling`` and asks again after the ladder's next
    rung, because a request with that key may still be in flight somewhere; when
    the key's retention at the gateway runs out, an operator decides
    (``reconciliation_inconclusive``): a forgotten key proves nothing, and a
    re-send under it could charge again.
    """
    _assert_outside_transaction()
    ids = [uuid.UUID(str(i)) for i in payment_ids]
    payments = list(Payment.objects.filter(pk__in=ids, status=Status.RECONCILING).only(*SUBMISSION_FIELDS))
    report = ReconcileReport()
    if not payments:
        return report
    now = timezone.now()
    deadlines = {pid: reconcile_deadline(at) for pid, at in first_submitted_at(payments).items()}
    circuit = _gateway_name()
    admission = circuit_admit(circuit, len(payments))
    held, payments = payments[admission.allowed :], payments[: admission.allowed]

    writes: list[OutcomeWrite] = []
    later: list[Reschedule] = []

    def ask_later(payment: Payment, reason: str, data: dict[str, Any] | None = None) -> None:
        decision = reconcile_decision(
            reason=reason, tries=payment.reconcile_attempts, now=now, deadline=deadlines[payment.pk], data=data
        )
        if decision.to_status == Status.RECONCILING:
            assert decision.next_attempt_in is not None
            later.append(Reschedule(payment.pk, payment.attempts, decision.next_attempt_in, count_try=True))
        else:
            writes.append(decision_write(payment, decision))

    for payment in held:
        if now >= deadlines[payment.pk]:
            writes.append(decision_write(payment, inconclusive({"circuit": "open"})))
        else:
            delay = min(_defer_delay(admission), deadlines[payment.pk] - now)
            later.append(Reschedule(payment.pk, payment.attempts, delay, count_try=False))
    report.deferred = len(held)

    gateway = _gateway() if payments else None
    calls = failures = 0
    resend: list[Payment] = []
    lookups: dict[Any, Lookup] = {}
    if gateway is not None:
        lookups = _look_up(gateway, payments, circuit=circuit, report_failures=not admission.probe)
    for payment in payments:
        lookup = lookups[payment.pk]
        calls += 0 if lookup.reported else 1  # a reported failure was already told to the circuit
        if lookup.failure is not None:
            logger.warning("reconcile: lookup failed for %s, will ask again: %s", payment.pk, lookup.failure)
            failures += 0 if lookup.reported else 1
            ask_later(payment, "lookup_failed")
            continue
        record = lookup.record
        if record is not None:
            report.found += 1
            found = record_write(payment, record, now=now)
            if found.to_status == Status.RECONCILING:
                # Still processing at the gateway: poll on its own schedule, no rung climbed.
                assert found.next_attempt_in is not None
                later.append(Reschedule(payment.pk, payment.attempts, found.next_attempt_in, count_try=False))
            else:
                writes.append(found)
        elif now >= deadlines[payment.pk]:
            # The gateway may have forgotten the key: "no charge" proves nothing, and a re-send could charge.
            writes.append(decision_write(payment, inconclusive({"lookup": "absent"})))
        else:
            resend.append(payment)
    resend, lease_lost = _covered_by_lease(resend, status=Status.RECONCILING)
    report.lease_lost = len(lease_lost)
    if resend:
        assert gateway is not None
        _assert_outside_transaction()
        report.resent = len(resend)
        calls += len(resend)
        outcomes = gateway.charge_many([charge_request(p) for p in resend])
        for payment, outcome in zip(resend, outcomes, strict=True):
            failures += _is_gateway_failure(outcome)
            decision = decide(
                outcome,
                phase=Phase.RESEND,
                budget=retry_budget(payment),
                now=now,
                reconcile_tries=payment.reconcile_attempts,
                reconcile_deadline_at=deadlines[payment.pk],
            )
            if decision.to_status == Status.RECONCILING:
                assert decision.next_attempt_in is not None
                climbs = not (decision.data or {}).get(PROCESSING)  # a charge still processing is no failed try
                later.append(Reschedule(payment.pk, payment.attempts, decision.next_attempt_in, count_try=climbs))
            else:
                writes.append(decision_write(payment, decision))
    written = record_outcomes(writes, from_status=Status.RECONCILING, actor=RECONCILER_ACTOR)
    report.recorded = len(written)
    report.dead_lettered = sum(1 for w in writes if w.to_status == Status.DEAD_LETTERED and w.payment_id in written)
    report.postponed = reschedule_waiting(later, status=Status.RECONCILING)
    if calls:
        circuit_record(circuit, calls=calls, failures=failures, probe=admission.probe)
    elif admission.probe:
        circuit_abandon_probe(circuit)
    logger.info("reconcile %s", report.as_dict())
    return report


RECONCILE_CRASHED = "reconcile_crashed"


def payments_reconcile_crashed(payment_ids: Sequence[str | uuid.UUID]) -> int:
    """A reconcile task raised (a misconfigured adapter, a bug): its payments climb a rung as if asked.

    So a task that raises every time cannot loop once per lease forever: each crash counts towards
    the reconcile deadline, and past it the payment is dead-lettered ``needs_operator``. The crashed
    task is over, so nothing of it is still in flight. Returns how many payments were moved on.
    """
    ids = [uuid.UUID(str(i)) for i in payment_ids]
    payments = list(Payment.objects.filter(pk__in=ids, status=Status.RECONCILING).only(*SUBMISSION_FIELDS))
    if not payments:
        return 0
    now = timezone.now()
    deadlines = {pid: reconcile_deadline(at) for pid, at in first_submitted_at(payments).items()}
    writes: list[OutcomeWrite] = []
    later: list[Reschedule] = []
    for payment in payments:
        decision = reconcile_decision(
            reason=RECONCILE_CRASHED, tries=payment.reconcile_attempts, now=now, deadline=deadlines[payment.pk]
        )
        if decision.to_status == Status.RECONCILING:
            assert decision.next_attempt_in is not None
            later.append(Reschedule(payment.pk, payment.attempts, decision.next_attempt_in, count_try=True))
        else:
            writes.append(
                OutcomeWrite(
                    payment.pk,
                    payment.attempts,
                    Status.DEAD_LETTERED,
                    DeadLetterReason.NEEDS_OPERATOR,
                    dead_letter_reason=DeadLetterReason.NEEDS_OPERATOR,
                    data={RECONCILE_CRASHED: True, "deadline": deadlines[payment.pk].isoformat()},
                )
            )
    written = record_outcomes(writes, from_status=Status.RECONCILING, actor=RECONCILER_ACTOR)
    moved = len(written) + reschedule_waiting(later, status=Status.RECONCILING)
    if written:
        logger.error("reconcile: tasks kept crashing past the deadline, dead-lettered %s", sorted(map(str, written)))
    return moved


# --- Periodic tasks (django-celery-beat) -----------------------------------------------

SWEEP_TASK = "payments.tasks.sweep_due_payments_task"
EXECUTE_TASK = "payments.tasks.execute_payments_task"
RECONCILE_TASK = "payments.tasks.reconcile_payments_task"
IDEMPOTENCY_PURGE_TASK = "payments.tasks.idempotency_purge_task"
DEAD_LETTER_DRAIN_TASK = "payments.tasks.drain_dead_letters_task"
SWEEP_PERIODIC_TASK_NAME = "payments: sweep due payments"
IDEMPOTENCY_PURGE_PERIODIC_TASK_NAME = "payments: purge expired idempotency keys"
DEAD_LETTER_DRAIN_PERIODIC_TASK_NAME = "payments: record dead-lettered messages"


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
    drain_every, drain_period = interval_every_period(settings.DEAD_LETTER_DRAIN_INTERVAL_SECONDS)
    drain_interval, _ = IntervalSchedule.objects.get_or_create(every=drain_every, period=drain_period)
    PeriodicTask.objects.update_or_create(
        name=DEAD_LETTER_DRAIN_PERIODIC_TASK_NAME,
        defaults={
            "task": DEAD_LETTER_DRAIN_TASK,
            "interval": drain_interval,
            "expire_seconds": max(1, round(settings.DEAD_LETTER_DRAIN_INTERVAL_SECONDS)),
            "enabled": True,
            "description": "Records messages RabbitMQ dead-lettered, for operators (docs/operations.md).",
        },
    )
