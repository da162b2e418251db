"""Business operations on payments. Views, tasks, admin actions and commands call these."""

from __future__ import annotations

import logging
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction

from accounts.models import User
from audit.services import audit_record
from common import actors
from common.crypto import payee_account_hmac
from common.error_codes import ErrorCode, FieldError, ProblemError

from .currencies import format_minor_units, to_minor_units
from .models import IdempotencyRecord, Payment
from .state_machine import apply_transition, database_now, lock_payment, record_creation
from .statuses import CANCELABLE_STATUSES, INTERNAL_STATUSES, EventReason, PublicStatus, Status

logger = logging.getLogger(__name__)


def payment_cancel(*, payment_id: uuid.UUID | str, actor: str, owner_id: int | None = None) -> Payment:
    """Cancel while no gateway submission has begun; canceling twice is a no-op.

    The row lock serialises this with the worker's move to ``submitting``: whichever
    commits first wins, so a payment is never both canceled and charged.
    ``owner_id`` scopes the lookup (another user's payment does not exist for them).
    """
    with transaction.atomic():
        try:
            payment = lock_payment(payment_id, owner_id=owner_id)
        except Payment.DoesNotExist:
            raise ProblemError(ErrorCode.NOT_FOUND, 404, "No such payment.") from None
        if payment.status == Status.CANCELED:
            return payment
        if payment.status not in CANCELABLE_STATUSES:
            raise ProblemError(
                ErrorCode.PAYMENT_NOT_CANCELABLE,
                409,
                f"A payment that is {payment.public_status} can no longer be canceled.",
            )
        now = database_now()
        apply_transition(
            payment,
            to=Status.CANCELED,
            actor=actor,
            reason=EventReason.CANCELED,
            expected_from=CANCELABLE_STATUSES,
            changes={"canceled_at": now, "lease_expires_at": None},
            now=now,
        )
    return payment


@dataclass(frozen=True)
class PaymentDraft:
    """A validated request to schedule a payment (see ``serializers.validate_payment_create``)."""

    amount_minor: int
    currency: str
    payment_method: str
    payee_name: str
    payee_account: str
    description: str
    metadata: dict[str, str]
    scheduled_for: datetime  # the instant, UTC
    time_zone: str
    scheduled_local: str


def account_last4(account: str) -> str:
    """The last four letters or digits of an account identifier: all the API ever shows of it."""
    return "".join(char for char in account if char.isalnum())[-4:]


# Payments that count against PAYMENTS_MAX_PENDING_PER_USER: public status "scheduled"
# (the index payment_owner_pending_idx has the same condition).
PENDING_STATUSES = tuple(INTERNAL_STATUSES[PublicStatus.SCHEDULED])
# Payments that do not count against PAYMENTS_MAX_DAILY_AMOUNT: they will never move money.
NOT_MOVING_MONEY = (Status.CANCELED, Status.FAILED)
# pg_advisory_xact_lock(namespace, user id): the two-int4 key space, apart from the sweep's bigint key.
_CREATE_LOCK_NAMESPACE = zlib.crc32(b"payments.payment_create") & 0x7FFFFFFF


def _lock_owner_for_create(owner_id: int) -> None:
    """Serialise one user's payment creations until the transaction ends (limits are check-then-insert).

    A transaction-scoped advisory lock rather than ``SELECT ... FOR UPDATE`` on the user's
    row: it lives only in PostgreSQL's lock table (no write to the user's heap page, no
    WAL), and it conflicts with nothing else, whereas a row lock on ``accounts_user``
    would also block the ``FOR KEY SHARE`` lock every payment insert takes on its owner
    (the foreign-key check), token bookkeeping and admin edits of that user. Only
    requests of the same user wait for each other, for the few milliseconds of a create.
    Users whose ids are equal modulo 2**31 share a lock: harmless, only a little waiting.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_CREATE_LOCK_NAMESPACE, owner_id % 2_147_483_648])


# Both of a user's limits in one round trip. The pending count reads at most
# max_pending + 1 entries of payment_owner_pending_idx, whatever the user's history; the day's
# sum reads that day's payments through payment_owner_listing_idx (owner, scheduled_for).
def _in_list(name: str, values: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """``(%(name0)s, %(name1)s, ...)`` and its parameters: constants the planner can match with
    the partial indexes' predicates, passed as parameters, never interpolated."""
    params = {f"{name}{i}": str(value) for i, value in enumerate(values)}
    return "(" + ", ".join(f"%({key})s" for key in params) + ")", params


_PENDING_IN, _PENDING_PARAMS = _in_list("pending", PENDING_STATUSES)
_NOT_MOVING_IN, _NOT_MOVING_PARAMS = _in_list("not_moving", NOT_MOVING_MONEY)
# Only placeholders are interpolated into the text (S608).
_LIMITS_SQL = f"""
    SELECT
        (SELECT COUNT(*) FROM (
            SELECT 1 FROM payments_payment
            WHERE owner_id = %(owner)s AND status IN {_PENDING_IN}
            LIMIT %(pending_cap)s
        ) AS pending),
        (SELECT COALESCE(SUM(amount_minor), 0) FROM payments_payment
         WHERE owner_id = %(owner)s AND currency = %(currency)s
           AND scheduled_for >= %(day_start)s AND scheduled_for < %(day_end)s
           AND status NOT IN {_NOT_MOVING_IN})
"""  # noqa: S608


def _enforce_limits(owner_id: int, data: PaymentDraft) -> None:
    """422 when this payment would exceed the user's pending count or daily amount (call under the lock)."""
    max_pending = int(settings.PAYMENTS_MAX_PENDING_PER_USER)
    day_start = data.scheduled_for.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    with connection.cursor() as cursor:
        cursor.execute(
            _LIMITS_SQL,
            {
                "owner": owner_id,
                "pending_cap": max_pending + 1,
                "currency": data.currency,
                "day_start": day_start,
                "day_end": day_start + timedelta(days=1),
                **_PENDING_PARAMS,
                **_NOT_MOVING_PARAMS,
            },
        )
        pending, scheduled_that_day = cursor.fetchone() or (0, 0)
    if pending >= max_pending:
        raise ProblemError(
            ErrorCode.PENDING_PAYMENTS_LIMIT_EXCEEDED,
            422,
            f"You have {max_pending} scheduled payments, the most allowed at once; "
            "schedule more once some have executed, or cancel some.",
            extra={"limit": max_pending},
        )
    limit_minor = to_minor_units(Decimal(settings.PAYMENTS_MAX_DAILY_AMOUNT), data.currency)
    if scheduled_that_day + data.amount_minor > limit_minor:
        limit = format_minor_units(limit_minor, data.currency)
        message = (
            f"Payments scheduled for {day_start.date().isoformat()} (UTC) in {data.currency} may total at most "
            f"{limit} {data.currency}; this one would exceed that."
        )
        raise ProblemError(
            ErrorCode.DAILY_AMOUNT_LIMIT_EXCEEDED,
            422,
            message,
            errors=[FieldError("amount", ErrorCode.DAILY_AMOUNT_LIMIT_EXCEEDED, message)],
            extra={
                "limit": limit,
                "scheduled_that_day": format_minor_units(scheduled_that_day, data.currency),
            },
        )


def payment_create(*, owner: User, data: PaymentDraft, actor: str, now: datetime | None = None) -> Payment:
    """Create a scheduled payment and the first event of its timeline, in one transaction.

    ``now`` is the creation instant: the database clock's reading the request already
    took (read here when not given), as for every later transition, so the timeline stays
    in order. The sweep finds the payment
    by ``scheduled_for``: nothing is queued here.

    The user's limits (``PAYMENTS_MAX_PENDING_PER_USER``, ``PAYMENTS_MAX_DAILY_AMOUNT``)
    are checked here, so every entry point (API, admin, commands, scripts) gets them,
    under a per-user lock held until the transaction commits: parallel requests of
    one user cannot together pass a limit that each alone would respect.
    """
    now = now or database_now()
    # No savepoint when called inside a transaction (the API's idempotent create): a refusal
    # here fails the whole request anyway, and a savepoint costs two more round trips.
    with transaction.atomic(savepoint=False):
        _lock_owner_for_create(owner.pk)
        _enforce_limits(owner.pk, data)
        payment = Payment.objects.create(
            owner=owner,
            amount_minor=data.amount_minor,
            currency=data.currency,
            payment_method=data.payment_method,
            payee_name=data.payee_name,
            payee_account=data.payee_account,
            payee_account_last4=account_last4(data.payee_account),
            payee_account_hmac=payee_account_hmac(data.payee_account),
            description=data.description,
            metadata=data.metadata,
            scheduled_for=data.scheduled_for,
            time_zone=data.time_zone,
            scheduled_local=data.scheduled_local,
            status=Status.SCHEDULED,
            created_at=now,
            updated_at=now,
        )
        record_creation(payment, actor=actor)
    logger.info("payment created id=%s owner=%s actor=%s", payment.pk, owner.pk, actor)
    return payment


def payment_cancel_by_staff(*, payment_id: uuid.UUID | str, staff_user_id: int) -> Payment:
    """A support agent's cancel (admin action): ``payment_cancel`` plus an audit row, atomically."""
    actor = actors.staff(staff_user_id)
    with transaction.atomic():
        payment = payment_cancel(payment_id=payment_id, actor=actor)
        audit_record(actor=actor, action="payment.canceled", target=payment, data={"status": payment.status})
    return payment


def idempotency_purge_expired(*, now: datetime | None = None, batch_size: int = 1000) -> int:
    """Delete idempotency records past ``expires_at``, in small batches; returns how many.

    Batches keep each delete's locks and WAL short, so this can run every few
    minutes beside live traffic. ``now`` defaults to the database's clock, the one
    ``expires_at`` was set from: a worker whose clock runs ahead must not free keys early.
    """
    now = now or database_now()
    total = 0
    while True:
        batch = list(
            IdempotencyRecord.objects.filter(expires_at__lte=now)
            .order_by("expires_at")
            .values_list("pk", flat=True)[:batch_size]
        )
        if not batch:
            break
        deleted, _ = IdempotencyRecord.objects.filter(pk__in=batch, expires_at__lte=now).delete()
        total += deleted
        if len(batch) < batch_size:
            break
    if total:
        logger.info("idempotency purge deleted=%s", total)
    return total
