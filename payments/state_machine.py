"""The only code that changes a payment's status.

Every transition runs in a short transaction on a locked row, is checked
against ``statuses.ALLOWED_TRANSITIONS`` and, where the caller says so, against
the expected current status and attempt number (the fencing token, so a
zombie worker's late write changes nothing), and writes one ``PaymentEvent``
in the same transaction.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from .models import Payment, PaymentEvent
from .statuses import Status, is_allowed

logger = logging.getLogger(__name__)


class TransitionRejected(Exception):
    """The payment is not in a state (or attempt) where this transition may happen."""

    def __init__(self, payment: Payment, to_status: str, why: str) -> None:
        super().__init__(f"payment {payment.pk}: {payment.status} → {to_status} rejected: {why}")
        self.payment = payment
        self.to_status = to_status
        self.why = why


def lock_payment(payment_id: uuid.UUID | str, *, owner_id: int | None = None) -> Payment:
    """Lock and return the row; call inside ``transaction.atomic()``. Raises ``Payment.DoesNotExist``."""
    queryset = Payment.objects.select_for_update(of=("self",))
    if owner_id is not None:
        queryset = queryset.filter(owner_id=owner_id)
    return queryset.get(pk=payment_id)


def apply_transition(
    payment: Payment,
    *,
    to: str,
    actor: str,
    reason: str,
    expected_from: Collection[str] | None = None,
    expected_attempt: int | None = None,
    changes: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> PaymentEvent:
    """Move a payment that the caller holds locked (inside its transaction) and record the event."""
    if expected_from is not None and payment.status not in expected_from:
        raise TransitionRejected(payment, to, f"expected one of {sorted(expected_from)}")
    if expected_attempt is not None and payment.attempts != expected_attempt:
        raise TransitionRejected(payment, to, f"stale attempt {expected_attempt} (now {payment.attempts})")
    if not is_allowed(payment.status, to):
        raise TransitionRejected(payment, to, "not an allowed transition")
    now = now or timezone.now()
    from_status = payment.status
    payment.status = to
    payment.updated_at = now
    update_fields = {"status", "updated_at"}
    for name, value in (changes or {}).items():
        setattr(payment, name, value)
        update_fields.add(name)
    payment.save(update_fields=sorted(update_fields))
    return PaymentEvent.objects.create(
        payment=payment,
        at=now,
        from_status=from_status,
        to_status=to,
        reason=reason,
        actor=actor,
        attempt=payment.attempts,
        data=dict(data or {}),
    )


def transition(
    payment_id: uuid.UUID | str,
    *,
    to: str,
    actor: str,
    reason: str,
    expected_from: Collection[str] | None = None,
    expected_attempt: int | None = None,
    changes: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
) -> Payment:
    """Lock, check, change and record in one short transaction of its own."""
    with transaction.atomic():
        payment = lock_payment(payment_id)
        apply_transition(
            payment,
            to=to,
            actor=actor,
            reason=reason,
            expected_from=expected_from,
            expected_attempt=expected_attempt,
            changes=changes,
            data=data,
        )
    return payment


def record_creation(payment: Payment, *, actor: str) -> PaymentEvent:
    """The first event of a payment's timeline (∅ → scheduled), in the creating transaction."""
    return PaymentEvent.objects.create(
        payment=payment,
        at=payment.created_at,
        from_status="",
        to_status=payment.status,
        reason="created",
        actor=actor,
        attempt=0,
    )


# --- Batch transitions for the execution engine ---------------------------------
#
# The engine moves payments in batches for throughput, but every row is still
# guarded on its own: a row moves only if *its* status (and, for outcomes, *its*
# attempt number, the fencing token) is the expected one, under *its* row lock,
# and gets *its* own event row in the same transaction. Each batch is one statement
# (``UPDATE … RETURNING`` with the events inserted by a data-modifying CTE).

SWEEP_LOCK_KEY = 0x5041_594D_5357_4550  # "PAYMSWEP": the sweep's advisory-lock key (database-local)


@dataclass(frozen=True)
class Claim:
    """A payment the sweep has claimed, and the instant its execution is due."""

    payment_id: uuid.UUID
    due_at: datetime


@dataclass(frozen=True)
class SubmissionStart:
    """What ``begin_submissions`` did: the payments now ``submitting`` and those delivered early."""

    submitting: list[Payment]
    # Not due yet by the database clock (an early delivery): (payment id, seconds until due).
    not_yet_due: list[tuple[uuid.UUID, float]]


@dataclass(frozen=True)
class OutcomeWrite:
    """One attempt's outcome, to be written only if the payment is still at that attempt."""

    payment_id: uuid.UUID
    attempt: int
    to_status: str
    reason: str
    gateway_reference: str = ""
    failure_code: str = ""
    failure_message: str = ""
    # For retry_scheduled / reconciling: when the next try is due, from now.
    next_attempt_in: timedelta | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    # For dead_lettered: why the engine gave up (retry_policy.DeadLetterReason).
    dead_letter_reason: str = ""


@dataclass(frozen=True)
class Reschedule:
    """Push one waiting payment's next try, if it is still at ``attempt`` (no status change, no event)."""

    payment_id: uuid.UUID
    attempt: int
    delay: timedelta
    # An inconclusive reconciliation try: climb one rung of the ladder (``reconcile_attempts + 1``).
    count_try: bool = False


def _check_allowed(from_status: str, to_status: str) -> None:
    if not is_allowed(from_status, to_status):
        raise ValueError(f"{from_status} → {to_status} is not an allowed transition")


def _outcome_changes(write: OutcomeWrite, now: datetime) -> dict[str, Any]:
    changes: dict[str, Any] = {
        "lease_expires_at": None,
        "next_attempt_at": now + write.next_attempt_in if write.next_attempt_in is not None else None,
        "failure_code": write.failure_code,
        "failure_message": write.failure_message[:255],
    }
    if write.gateway_reference:
        changes["gateway_reference"] = write.gateway_reference
    if write.to_status == Status.SUCCEEDED:
        changes["executed_at"] = now
    if write.to_status == Status.DEAD_LETTERED:
        changes["dead_letter_reason"] = write.dead_letter_reason or write.reason
    return changes


def _lease_expired(payment: Payment, now: datetime) -> bool:
    return payment.lease_expires_at is not None and payment.lease_expires_at <= now


# The SQL below names the tables literally (tests check them against the models' db_table).


# What a submission needs of each payment: the charge request, and the retry budget (retry_policy).
SUBMISSION_FIELDS = (
    "id",
    "attempts",
    "amount_minor",
    "currency",
    "payment_method",
    "status",
    "scheduled_for",
    "redrive_attempt",
    "redriven_at",
    "reconcile_attempts",
)


class _PostgresBatch:
    """PostgreSQL: one statement per batch, ``FOR UPDATE SKIP LOCKED`` claims, the database clock.

    The clock is ``statement_timestamp()``: the database's, never a worker's, and one
    instant for the whole statement (``now()`` would be the start of an enclosing
    transaction, which can be much older).

    Where a statement finds payments by id (the ids it is given, or those its claim CTE just
    locked), it compares ``status`` with a column of an ``expected`` CTE (``MATERIALIZED``, so
    opaque to the planner), never with a constant. From a constant status the planner can prove
    the predicates of the partial indexes on status (``payment_owner_pending_idx``,
    ``payment_lease_rescue_idx``, …) and, with stale statistics (a large table whose autoanalyze
    has not yet seen thousands of payments move), it scans one of them whole, filtering on the
    id, instead of probing the primary key once per id: ~30 ms to seconds instead of ~1 ms per
    batch, growing with the payments in flight (docs/performance.md). The guards are the same
    tests on the same values; only the plan changes. The claim CTEs, which *search* by status,
    keep their constants: there the partial index is the plan wanted. The statements are class
    attributes so that tests can EXPLAIN them.
    """

    def _fetch(self, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return list(cursor.fetchall())

    def now(self) -> datetime:
        rows = self._fetch("SELECT statement_timestamp()", {})
        value: datetime = rows[0][0]
        return value

    @contextmanager
    def sweep_leader_lock(self) -> Iterator[bool]:
        # Session-level, so it spans the sweep's several short transactions; it dies with the
        # connection if the process does. Advisory locks are per database, so test databases
        # and other environments on the same server never see each other's.
        acquired = bool(self._fetch("SELECT pg_try_advisory_lock(%(key)s)", {"key": SWEEP_LOCK_KEY})[0][0])
        try:
            yield acquired
        finally:
            if acquired:
                try:
                    self._fetch("SELECT pg_advisory_unlock(%(key)s)", {"key": SWEEP_LOCK_KEY})
                except DatabaseError:
                    # The connection is gone, and the lock with it.
                    logger.warning("sweep: could not release the advisory lock", exc_info=True)

    # The sweep's hot query: the partial index payment_due_sweep_idx gives the due edge in
    # due order; rows another sweep holds are skipped, never waited for. The UPDATE's guard
    # compares with ``expected``, not a constant (class docstring), as in every statement below.
    CLAIM_DUE_SQL = """
        WITH expected AS MATERIALIZED (SELECT 'scheduled'::text AS scheduled),
        due AS MATERIALIZED (
            SELECT id FROM payments_payment
            WHERE status = 'scheduled' AND scheduled_for <= statement_timestamp() + %(lookahead)s
            ORDER BY scheduled_for
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
        ), moved AS (
            UPDATE payments_payment AS p
            SET status = 'dispatched', updated_at = statement_timestamp(),
                lease_expires_at = GREATEST(p.scheduled_for, statement_timestamp()) + %(lease)s
            FROM due CROSS JOIN expected WHERE p.id = due.id AND p.status = expected.scheduled
            RETURNING p.id, p.scheduled_for, p.attempts
        ), events AS (
            INSERT INTO payments_paymentevent (payment_id, at, from_status, to_status, reason, actor, attempt, data)
            SELECT id, statement_timestamp(), 'scheduled', 'dispatched', 'due', %(actor)s, attempts, '{}'::jsonb
            FROM moved
        )
        SELECT id, scheduled_for FROM moved ORDER BY scheduled_for
    """

    def claim_due(self, *, lookahead: timedelta, lease: timedelta, limit: int, actor: str) -> list[Claim]:
        _check_allowed(Status.SCHEDULED, Status.DISPATCHED)
        with transaction.atomic():
            rows = self._fetch(
                self.CLAIM_DUE_SQL, {"lookahead": lookahead, "limit": limit, "lease": lease, "actor": actor}
            )
        return [Claim(row[0], row[1]) for row in rows]

    REDISPATCH_SQL = """
        WITH expected AS MATERIALIZED (SELECT 'dispatched'::text AS dispatched),
        expired AS MATERIALIZED (
            SELECT id FROM payments_payment
            WHERE status = 'dispatched' AND lease_expires_at <= statement_timestamp()
            ORDER BY lease_expires_at LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
        ), moved AS (
            UPDATE payments_payment AS p
            SET updated_at = statement_timestamp(),
                lease_expires_at = GREATEST(p.scheduled_for, statement_timestamp()) + %(lease)s
            FROM expired CROSS JOIN expected WHERE p.id = expired.id AND p.status = expected.dispatched
            RETURNING p.id, p.scheduled_for, p.attempts
        ), events AS (
            INSERT INTO payments_paymentevent (payment_id, at, from_status, to_status, reason, actor, attempt, data)
            SELECT id, statement_timestamp(), 'dispatched', 'dispatched', 'lease_expired', %(actor)s, attempts,
                   '{}'::jsonb
            FROM moved
        )
        SELECT id, scheduled_for FROM moved ORDER BY scheduled_for
    """

    def redispatch_expired(self, *, lease: timedelta, limit: int, actor: str) -> list[Claim]:
        _check_allowed(Status.DISPATCHED, Status.DISPATCHED)
        with transaction.atomic():
            rows = self._fetch(self.REDISPATCH_SQL, {"lease": lease, "limit": limit, "actor": actor})
        return [Claim(row[0], row[1]) for row in rows]

    EXPIRE_SUBMISSIONS_SQL = """
        WITH expected AS MATERIALIZED (SELECT 'submitting'::text AS submitting),
        expired AS MATERIALIZED (
            SELECT id FROM payments_payment
            WHERE status = 'submitting' AND lease_expires_at <= statement_timestamp()
            ORDER BY lease_expires_at LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
        ), moved AS (
            UPDATE payments_payment AS p
            SET status = 'reconciling', updated_at = statement_timestamp(), lease_expires_at = NULL,
                next_attempt_at = statement_timestamp()
            FROM expired CROSS JOIN expected WHERE p.id = expired.id AND p.status = expected.submitting
            RETURNING p.id, p.attempts
        ), events AS (
            INSERT INTO payments_paymentevent (payment_id, at, from_status, to_status, reason, actor, attempt, data)
            SELECT id, statement_timestamp(), 'submitting', 'reconciling', 'lease_expired', %(actor)s, attempts,
                   '{}'::jsonb
            FROM moved
        )
        SELECT id FROM moved
    """

    def expire_submissions(self, *, limit: int, actor: str) -> list[uuid.UUID]:
        _check_allowed(Status.SUBMITTING, Status.RECONCILING)
        with transaction.atomic():
            rows = self._fetch(self.EXPIRE_SUBMISSIONS_SQL, {"limit": limit, "actor": actor})
        return [row[0] for row in rows]

    CLAIM_WAITING_SQL = """
        WITH expected AS MATERIALIZED (SELECT %(status)s::text AS status),
        waiting AS MATERIALIZED (
            SELECT id FROM payments_payment
            WHERE status = %(status)s AND next_attempt_at <= statement_timestamp()
              AND (lease_expires_at IS NULL OR lease_expires_at <= statement_timestamp())
            ORDER BY next_attempt_at LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
        )
        UPDATE payments_payment AS p
        SET lease_expires_at = statement_timestamp() + %(lease)s, updated_at = statement_timestamp()
        FROM waiting CROSS JOIN expected WHERE p.id = waiting.id AND p.status = expected.status
        RETURNING p.id, p.next_attempt_at
    """

    def claim_waiting(self, *, status: str, lease: timedelta, limit: int) -> list[Claim]:
        with transaction.atomic():
            rows = self._fetch(self.CLAIM_WAITING_SQL, {"status": status, "lease": lease, "limit": limit})
        return [Claim(row[0], row[1]) for row in rows]

    RELEASE_LEASES_SQL = """
        WITH expected AS MATERIALIZED (SELECT 'dispatched'::text AS dispatched)
        UPDATE payments_payment AS p SET lease_expires_at = statement_timestamp()
        FROM expected
        WHERE p.id = ANY(%(ids)s) AND p.status = expected.dispatched
    """

    def release_dispatch_leases(self, ids: Sequence[uuid.UUID]) -> int:
        with connection.cursor() as cursor:
            cursor.execute(self.RELEASE_LEASES_SQL, {"ids": list(ids)})
            return int(cursor.rowcount)

    BEGIN_SQL = """
        WITH expected AS MATERIALIZED (
            SELECT 'dispatched'::text AS dispatched, 'retry_scheduled'::text AS retry_scheduled
        ), ready AS MATERIALIZED (
            SELECT p.id, p.status FROM payments_payment AS p CROSS JOIN expected
            WHERE p.id = ANY(%(ids)s)
              AND ((p.status = expected.dispatched AND p.scheduled_for <= statement_timestamp())
                   OR (p.status = expected.retry_scheduled AND p.next_attempt_at <= statement_timestamp()))
            ORDER BY p.id
            FOR UPDATE OF p
        ), moved AS (
            UPDATE payments_payment AS p
            SET status = 'submitting', attempts = p.attempts + 1, updated_at = statement_timestamp(),
                lease_expires_at = statement_timestamp() + %(lease)s, next_attempt_at = NULL,
                reconcile_attempts = 0
            FROM ready WHERE p.id = ready.id AND p.status = ready.status
            RETURNING p.id, p.attempts, ready.status AS from_status
        ), events AS (
            INSERT INTO payments_paymentevent (payment_id, at, from_status, to_status, reason, actor, attempt, data)
            SELECT id, statement_timestamp(), from_status, 'submitting',
                   CASE from_status WHEN 'dispatched' THEN 'due' ELSE 'retry' END,
                   %(actor)s, attempts, '{}'::jsonb
            FROM moved
        )
        SELECT id, attempts FROM moved
    """

    # Of the payments begin_submissions did not move, those waiting to be due: (id, seconds until due).
    NOT_YET_DUE_SQL = """
        WITH expected AS MATERIALIZED (
            SELECT 'dispatched'::text AS dispatched, 'retry_scheduled'::text AS retry_scheduled
        )
        SELECT p.id, EXTRACT(EPOCH FROM (CASE p.status WHEN 'dispatched' THEN p.scheduled_for
                                                       ELSE p.next_attempt_at END) - statement_timestamp())
        FROM payments_payment AS p CROSS JOIN expected
        WHERE p.id = ANY(%(ids)s)
          AND ((p.status = expected.dispatched AND p.scheduled_for > statement_timestamp())
               OR (p.status = expected.retry_scheduled AND p.next_attempt_at > statement_timestamp()))
    """

    def begin_submissions(self, ids: Sequence[uuid.UUID], *, lease: timedelta, actor: str) -> SubmissionStart:
        _check_allowed(Status.DISPATCHED, Status.SUBMITTING)
        _check_allowed(Status.RETRY_SCHEDULED, Status.SUBMITTING)
        with transaction.atomic():
            rows = self._fetch(self.BEGIN_SQL, {"ids": list(ids), "lease": lease, "actor": actor})
            moved = {row[0]: row[1] for row in rows}
            # One more round trip for the fields a charge needs, through the ORM so that
            # sensitive fields are read the way their field classes decode them.
            submitting = list(Payment.objects.filter(pk__in=list(moved)).only(*SUBMISSION_FIELDS))
        not_yet_due: list[tuple[uuid.UUID, float]] = []
        rest = [pid for pid in ids if pid not in moved]
        if rest:
            early = self._fetch(self.NOT_YET_DUE_SQL, {"ids": rest})
            not_yet_due = [(row[0], float(row[1])) for row in early]
        return SubmissionStart(submitting, not_yet_due)

    OUTCOMES_SQL = """
        WITH v AS MATERIALIZED (
            SELECT * FROM unnest(
                %(ids)s::uuid[], %(attempts)s::int[], %(to)s::text[], %(reasons)s::text[],
                %(refs)s::text[], %(codes)s::text[], %(messages)s::text[], %(delays)s::float8[],
                %(data)s::text[], %(dead_reasons)s::text[]
            ) AS v(id, attempt, to_status, reason, ref, code, message, delay, data, dead_reason)
        ), expected AS MATERIALIZED (
            SELECT %(from)s::text AS status
        ), locked AS MATERIALIZED (
            SELECT p.id FROM payments_payment AS p JOIN v ON v.id = p.id CROSS JOIN expected
            WHERE p.status = expected.status AND p.attempts = v.attempt
            ORDER BY p.id
            FOR UPDATE OF p
        ), moved AS (
            UPDATE payments_payment AS p
            SET status = v.to_status, updated_at = statement_timestamp(), lease_expires_at = NULL,
                next_attempt_at = CASE WHEN v.delay IS NULL THEN NULL
                                       ELSE statement_timestamp() + v.delay * interval '1 second' END,
                executed_at = CASE WHEN v.to_status = 'succeeded' THEN statement_timestamp() ELSE p.executed_at END,
                gateway_reference = CASE WHEN v.ref <> '' THEN v.ref ELSE p.gateway_reference END,
                failure_code = v.code, failure_message = v.message,
                dead_letter_reason = CASE WHEN v.to_status = 'dead_lettered' THEN v.dead_reason
                                          ELSE p.dead_letter_reason END
            FROM v JOIN locked ON locked.id = v.id CROSS JOIN expected
            WHERE p.id = v.id AND p.status = expected.status AND p.attempts = v.attempt
            RETURNING p.id, p.attempts, v.to_status, v.reason, v.data
        ), events AS (
            INSERT INTO payments_paymentevent (payment_id, at, from_status, to_status, reason, actor, attempt, data)
            SELECT id, statement_timestamp(), %(from)s, to_status, reason, %(actor)s, attempts, data::jsonb
            FROM moved
        )
        SELECT id FROM moved
    """

    def record_outcomes(self, writes: Sequence[OutcomeWrite], *, from_status: str, actor: str) -> list[uuid.UUID]:
        if not writes:
            return []
        for write in writes:
            _check_allowed(from_status, write.to_status)
        params: dict[str, Any] = {
            "ids": [w.payment_id for w in writes],
            "attempts": [w.attempt for w in writes],
            "to": [w.to_status for w in writes],
            "reasons": [w.reason for w in writes],
            "refs": [w.gateway_reference for w in writes],
            "codes": [w.failure_code for w in writes],
            "messages": [w.failure_message[:255] for w in writes],
            "delays": [w.next_attempt_in.total_seconds() if w.next_attempt_in is not None else None for w in writes],
            "data": [json.dumps(dict(w.data)) for w in writes],
            "dead_reasons": [w.dead_letter_reason or w.reason for w in writes],
            "from": from_status,
            "actor": actor,
        }
        with transaction.atomic():
            rows = self._fetch(self.OUTCOMES_SQL, params)
        return [row[0] for row in rows]

    POSTPONE_SQL = """
        WITH expected AS MATERIALIZED (SELECT %(status)s::text AS status)
        UPDATE payments_payment AS p
        SET lease_expires_at = NULL, next_attempt_at = statement_timestamp() + %(delay)s * interval '1 second',
            updated_at = statement_timestamp()
        FROM unnest(%(ids)s::uuid[], %(attempts)s::int[]) AS v(id, attempt) CROSS JOIN expected
        WHERE p.id = v.id AND p.attempts = v.attempt AND p.status = expected.status
    """

    def postpone(self, items: Sequence[tuple[uuid.UUID, int]], *, status: str, delay: timedelta) -> int:
        if not items:
            return 0
        with connection.cursor() as cursor:
            cursor.execute(
                self.POSTPONE_SQL,
                {
                    "ids": [item[0] for item in items],
                    "attempts": [item[1] for item in items],
                    "status": status,
                    "delay": delay.total_seconds(),
                },
            )
            return int(cursor.rowcount)

    RESCHEDULE_SQL = """
        WITH expected AS MATERIALIZED (SELECT %(status)s::text AS status)
        UPDATE payments_payment AS p
        SET lease_expires_at = NULL, updated_at = statement_timestamp(),
            next_attempt_at = statement_timestamp() + v.delay * interval '1 second',
            reconcile_attempts = p.reconcile_attempts + v.tried
        FROM unnest(%(ids)s::uuid[], %(attempts)s::int[], %(delays)s::float8[], %(tried)s::int[])
             AS v(id, attempt, delay, tried)
             CROSS JOIN expected
        WHERE p.id = v.id AND p.attempts = v.attempt AND p.status = expected.status
    """

    def reschedule(self, items: Sequence[Reschedule], *, status: str) -> int:
        if not items:
            return 0
        with connection.cursor() as cursor:
            cursor.execute(
                self.RESCHEDULE_SQL,
                {
                    "ids": [item.payment_id for item in items],
                    "attempts": [item.attempt for item in items],
                    "delays": [item.delay.total_seconds() for item in items],
                    "tried": [1 if item.count_try else 0 for item in items],
                    "status": status,
                },
            )
            return int(cursor.rowcount)

    DEFER_SQL = """
        WITH expected AS MATERIALIZED (
            SELECT 'dispatched'::text AS dispatched, 'retry_scheduled'::text AS retry_scheduled
        ), held AS MATERIALIZED (
            SELECT p.id FROM payments_payment AS p CROSS JOIN expected
            WHERE p.id = ANY(%(ids)s) AND p.status = expected.dispatched
            ORDER BY p.id
            FOR UPDATE OF p
        ), moved AS (
            UPDATE payments_payment AS p
            SET lease_expires_at = statement_timestamp() + %(delay)s, updated_at = statement_timestamp()
            FROM held CROSS JOIN expected WHERE p.id = held.id AND p.status = expected.dispatched
            RETURNING p.id, p.attempts
        ), events AS (
            INSERT INTO payments_paymentevent (payment_id, at, from_status, to_status, reason, actor, attempt, data)
            SELECT id, statement_timestamp(), 'dispatched', 'dispatched', %(reason)s, %(actor)s, attempts, '{}'::jsonb
            FROM moved
        ), waiting AS (
            UPDATE payments_payment AS p
            SET lease_expires_at = NULL, next_attempt_at = statement_timestamp() + %(delay)s,
                updated_at = statement_timestamp()
            FROM expected
            WHERE p.id = ANY(%(ids)s) AND p.status = expected.retry_scheduled
            RETURNING p.id
        )
        SELECT id FROM moved UNION ALL SELECT id FROM waiting
    """

    def defer(self, ids: Sequence[uuid.UUID], *, delay: timedelta, actor: str, reason: str) -> list[uuid.UUID]:
        if not ids:
            return []
        _check_allowed(Status.DISPATCHED, Status.DISPATCHED)
        with transaction.atomic():
            rows = self._fetch(self.DEFER_SQL, {"ids": list(ids), "delay": delay, "actor": actor, "reason": reason})
        return [row[0] for row in rows]


def _batch_backend() -> _PostgresBatch:
    return _PostgresBatch()


def database_now() -> datetime:
    """The database's clock; the engine never trusts a worker's clock for due-ness."""
    return _batch_backend().now()


def sweep_leader_lock() -> AbstractContextManager[bool]:
    """Yields True for the one sweep that may work now, False for every other (PostgreSQL advisory lock)."""
    return _batch_backend().sweep_leader_lock()


def claim_due_payments(*, lookahead: timedelta, lease: timedelta, limit: int, actor: str) -> list[Claim]:
    """scheduled → dispatched for up to ``limit`` payments due within ``lookahead``, in due order."""
    return _batch_backend().claim_due(lookahead=lookahead, lease=lease, limit=limit, actor=actor)


def redispatch_expired_payments(*, lease: timedelta, limit: int, actor: str) -> list[Claim]:
    """dispatched → dispatched (reason ``lease_expired``) for claims whose message was lost."""
    return _batch_backend().redispatch_expired(lease=lease, limit=limit, actor=actor)


def expire_submissions(*, limit: int, actor: str) -> list[uuid.UUID]:
    """submitting → reconciling for attempts whose lease expired: their outcome is unknown."""
    return _batch_backend().expire_submissions(limit=limit, actor=actor)


def claim_waiting_payments(*, status: str, lease: timedelta, limit: int) -> list[Claim]:
    """Lease ``retry_scheduled`` / ``reconciling`` payments whose next try is due (no status change)."""
    if status not in (Status.RETRY_SCHEDULED, Status.RECONCILING):
        raise ValueError(f"{status} payments do not wait for a next attempt")
    return _batch_backend().claim_waiting(status=status, lease=lease, limit=limit)


def release_dispatch_leases(payment_ids: Sequence[uuid.UUID]) -> int:
    """Expire the dispatch leases of claims whose execution task could not be published."""
    return _batch_backend().release_dispatch_leases(payment_ids)


def begin_submissions(payment_ids: Sequence[uuid.UUID], *, lease: timedelta, actor: str) -> SubmissionStart:
    """dispatched (or retry_scheduled) → submitting, attempts + 1, for those due by the database clock.

    Commits before returning: the gateway may be called for the returned
    payments from now on, and a cancel can no longer win.
    """
    return _batch_backend().begin_submissions(payment_ids, lease=lease, actor=actor)


def record_outcomes(writes: Sequence[OutcomeWrite], *, from_status: str, actor: str) -> list[uuid.UUID]:
    """Write each outcome if its payment is still ``from_status`` at that attempt; returns those written."""
    return _batch_backend().record_outcomes(writes, from_status=from_status, actor=actor)


def postpone_payments(items: Sequence[tuple[uuid.UUID, int]], *, status: str, delay: timedelta) -> int:
    """Push the next try of payments still ``status`` at that attempt; no status change, no event."""
    return _batch_backend().postpone(items, status=status, delay=delay)


def reschedule_waiting(items: Sequence[Reschedule], *, status: str) -> int:
    """Like ``postpone_payments``, each with its own delay, optionally climbing the reconcile ladder."""
    if status not in (Status.RETRY_SCHEDULED, Status.RECONCILING):
        raise ValueError(f"{status} payments do not wait for a next attempt")
    return _batch_backend().reschedule(items, status=status)


def defer_payments(ids: Sequence[uuid.UUID], *, delay: timedelta, actor: str, reason: str) -> list[uuid.UUID]:
    """Hold payments back without beginning an attempt (the gateway's circuit is open).

    ``dispatched`` ones stay dispatched (still cancelable) with their lease pushed ``delay`` ahead,
    with an event (``dispatched → dispatched``, ``reason``); when it expires the sweep publishes them
    again. ``retry_scheduled`` ones get ``next_attempt_at`` pushed. No attempt is used or counted.
    """
    return _batch_backend().defer(ids, delay=delay, actor=actor, reason=reason)
