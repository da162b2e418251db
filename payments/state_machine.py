"""The only code that changes a payment's status: every transition, in one module.

One payment moves through ``apply_transition`` (services, operators), a batch of them
through one guarded statement of ``state_machine.sql`` (the engine), run by the functions
at the end of this module. Either way the move is checked against ``statuses.TRANSITIONS``
(the table of moves and the reasons each records) and, where the caller says so, against
the expected current status and attempt number (the fencing token, so a zombie worker's
late write changes nothing), and one ``PaymentEvent`` is written in the same transaction.

Events: written here, by the code that moves the payment, not by a trigger. A trigger
would need each row's reason, actor and data, which a batch statement has per row only in
its own ``unnest``/VALUES: it could reach them only through extra columns on the payment
row or session variables, more moving parts than the one ``events`` CTE per statement,
which writes exactly the rows the guarded UPDATE returned. tests/conftest.py checks after
every test that each event written is a move of the table. One clock: every event, and the
payment's ``updated_at``, is stamped by the database (``statement_timestamp()``, or
``database_now()`` for ``apply_transition``), never by a process.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

from django.db import DatabaseError, connection, transaction

from .models import Payment, PaymentEvent
from .statuses import EventReason, Status, is_allowed

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
    """Move a payment that the caller holds locked (inside its transaction) and record the event.

    ``now``: the database clock's reading the caller already took for the same change (e.g.
    ``canceled_at``); read here when not given.
    """
    if expected_from is not None and payment.status not in expected_from:
        raise TransitionRejected(payment, to, f"expected one of {sorted(expected_from)}")
    if expected_attempt is not None and payment.attempts != expected_attempt:
        raise TransitionRejected(payment, to, f"stale attempt {expected_attempt} (now {payment.attempts})")
    if not is_allowed(payment.status, to, reason):
        raise TransitionRejected(payment, to, f"not a transition of the table (reason {reason!r})")
    now = now or database_now()
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
        reason=EventReason.CREATED,
        actor=actor,
        attempt=0,
    )


# --- Batch transitions for the execution engine ---------------------------------
#
# The engine moves payments in batches for throughput, but every row is still
# guarded on its own: a row moves only if *its* status (and, for outcomes, *its*
# attempt number, the fencing token) is the expected one, under *its* row lock,
# and gets *its* own event row in the same transaction. Each batch is one named
# statement of state_machine.sql (``UPDATE … RETURNING`` with the events inserted by a
# data-modifying CTE).

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


def _check(from_status: str, to_status: str, reason: str) -> None:
    """A batch statement about to make a move that is not in the table is a bug: raise before it runs."""
    if not is_allowed(from_status, to_status, reason):
        raise ValueError(f"{from_status} → {to_status} ({reason}) is not an allowed transition (statuses.TRANSITIONS)")


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


def _load_queries(path: Path) -> dict[str, str]:
    """The named statements of a ``.sql`` file: ``-- name: <name>`` then the statement, up to its ``;``."""
    queries: dict[str, str] = {}
    name = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("-- name: "):
            name = line.removeprefix("-- name: ").strip()
            queries[name] = ""
        elif name:
            queries[name] += line + "\n"
    return {name: text.strip().removesuffix(";") for name, text in queries.items()}


# Every guarded batch statement, by name (tests EXPLAIN them).
QUERIES: Mapping[str, str] = MappingProxyType(_load_queries(Path(__file__).with_name("state_machine.sql")))


def _fetch(name: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(QUERIES[name], params)
        return list(cursor.fetchall())


def _execute(name: str, params: Mapping[str, Any]) -> int:
    with connection.cursor() as cursor:
        cursor.execute(QUERIES[name], params)
        return int(cursor.rowcount)


def database_now() -> datetime:
    """The database's clock; the engine never trusts a worker's clock for due-ness."""
    value: datetime = _fetch_sql("SELECT statement_timestamp()", {})[0][0]
    return value


def _fetch_sql(sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall())


@contextmanager
def sweep_leader_lock() -> Iterator[bool]:
    """Yields True for the one sweep that may work now, False for every other (PostgreSQL advisory lock).

    Session-level, so it spans the sweep's several short transactions; it dies with the
    connection if the process does. Advisory locks are per database, so test databases
    and other environments on the same server never see each other's.
    """
    acquired = bool(_fetch_sql("SELECT pg_try_advisory_lock(%(key)s)", {"key": SWEEP_LOCK_KEY})[0][0])
    try:
        yield acquired
    finally:
        if acquired:
            try:
                _fetch_sql("SELECT pg_advisory_unlock(%(key)s)", {"key": SWEEP_LOCK_KEY})
            except DatabaseError:
                # The connection is gone, and the lock with it.
                logger.warning("sweep: could not release the advisory lock", exc_info=True)


def claim_due_payments(*, lookahead: timedelta, lease: timedelta, limit: int, actor: str) -> list[Claim]:
    """scheduled → dispatched for up to ``limit`` payments due within ``lookahead``, in due order."""
    _check(Status.SCHEDULED, Status.DISPATCHED, EventReason.DUE)
    with transaction.atomic():
        rows = _fetch("claim_due", {"lookahead": lookahead, "limit": limit, "lease": lease, "actor": actor})
    return [Claim(row[0], row[1]) for row in rows]


def redispatch_expired_payments(*, lease: timedelta, limit: int, actor: str) -> list[Claim]:
    """dispatched → dispatched (reason ``lease_expired``) for claims whose message was lost."""
    _check(Status.DISPATCHED, Status.DISPATCHED, EventReason.LEASE_EXPIRED)
    with transaction.atomic():
        rows = _fetch("redispatch_expired", {"lease": lease, "limit": limit, "actor": actor})
    return [Claim(row[0], row[1]) for row in rows]


def expire_submissions(*, limit: int, actor: str) -> list[uuid.UUID]:
    """submitting → reconciling for attempts whose lease expired: their outcome is unknown."""
    _check(Status.SUBMITTING, Status.RECONCILING, EventReason.LEASE_EXPIRED)
    with transaction.atomic():
        rows = _fetch("expire_submissions", {"limit": limit, "actor": actor})
    return [row[0] for row in rows]


def claim_waiting_payments(*, status: str, lease: timedelta, limit: int) -> list[Claim]:
    """Lease ``retry_scheduled`` / ``reconciling`` payments whose next try is due (no status change)."""
    if status not in (Status.RETRY_SCHEDULED, Status.RECONCILING):
        raise ValueError(f"{status} payments do not wait for a next attempt")
    with transaction.atomic():
        rows = _fetch("claim_waiting", {"status": status, "lease": lease, "limit": limit})
    return [Claim(row[0], row[1]) for row in rows]


def release_dispatch_leases(payment_ids: Sequence[uuid.UUID]) -> int:
    """End the leases of claims (dispatched, retry or reconciliation) whose task could not be published."""
    return _execute("release_dispatch_leases", {"ids": list(payment_ids)})


def begin_submissions(payment_ids: Sequence[uuid.UUID], *, lease: timedelta, actor: str) -> SubmissionStart:
    """dispatched (or retry_scheduled) → submitting, attempts + 1, for those due by the database clock.

    Commits before returning: the gateway may be called for the returned
    payments from now on, and a cancel can no longer win.
    """
    _check(Status.DISPATCHED, Status.SUBMITTING, EventReason.DUE)
    _check(Status.RETRY_SCHEDULED, Status.SUBMITTING, EventReason.RETRY)
    ids = list(payment_ids)
    with transaction.atomic():
        rows = _fetch("begin_submissions", {"ids": ids, "lease": lease, "actor": actor})
        moved = {row[0]: row[1] for row in rows}
        # One more round trip for the fields a charge needs, through the ORM so that
        # sensitive fields are read the way their field classes decode them.
        submitting = list(Payment.objects.filter(pk__in=list(moved)).only(*SUBMISSION_FIELDS))
    not_yet_due: list[tuple[uuid.UUID, float]] = []
    rest = [pid for pid in ids if pid not in moved]
    if rest:
        not_yet_due = [(row[0], float(row[1])) for row in _fetch("not_yet_due", {"ids": rest})]
    return SubmissionStart(submitting, not_yet_due)


def record_outcomes(writes: Sequence[OutcomeWrite], *, from_status: str, actor: str) -> list[uuid.UUID]:
    """Write each outcome if its payment is still ``from_status`` at that attempt; returns those written."""
    if not writes:
        return []
    for write in writes:
        _check(from_status, write.to_status, write.reason)
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
        rows = _fetch("record_outcomes", params)
    return [row[0] for row in rows]


def reschedule_waiting(items: Sequence[Reschedule], *, status: str) -> int:
    """Push the next try of payments still ``status`` at that attempt, each with its own delay,
    optionally climbing the reconcile ladder; no status change, no event."""
    if status not in (Status.RETRY_SCHEDULED, Status.RECONCILING):
        raise ValueError(f"{status} payments do not wait for a next attempt")
    if not items:
        return 0
    return _execute(
        "reschedule_waiting",
        {
            "ids": [item.payment_id for item in items],
            "attempts": [item.attempt for item in items],
            "delays": [item.delay.total_seconds() for item in items],
            "tried": [1 if item.count_try else 0 for item in items],
            "status": status,
        },
    )


def defer_payments(ids: Sequence[uuid.UUID], *, delay: timedelta, actor: str, reason: str) -> list[uuid.UUID]:
    """Hold payments back without beginning an attempt (the gateway's circuit is open).

    ``dispatched`` ones stay dispatched (still cancelable) with their lease pushed ``delay`` ahead,
    with an event (``dispatched → dispatched``, ``reason``); when it expires the sweep publishes them
    again. ``retry_scheduled`` ones get ``next_attempt_at`` pushed. No attempt is used or counted.
    """
    if not ids:
        return []
    _check(Status.DISPATCHED, Status.DISPATCHED, reason)
    with transaction.atomic():
        rows = _fetch("defer", {"ids": list(ids), "delay": delay, "actor": actor, "reason": reason})
    return [row[0] for row in rows]
