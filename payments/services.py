"""Business operations on payments. Views, tasks, admin actions and commands call these."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from accounts.models import User
from audit.services import audit_record

from .error_codes import ErrorCode, ProblemError
from .models import IdempotencyRecord, Payment
from .state_machine import apply_transition, lock_payment, record_creation
from .statuses import CANCELABLE_STATUSES, Status

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
        now = timezone.now()
        apply_transition(
            payment,
            to=Status.CANCELED,
            actor=actor,
            reason="canceled",
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


def payment_create(*, owner: User, data: PaymentDraft, actor: str, now: datetime | None = None) -> Payment:
    """Create a scheduled payment and the first event of its timeline, in one transaction.

    ``now`` is the creation instant (default: this process's clock, as for every
    later transition, so the timeline stays in order). The sweep finds the payment
    by ``scheduled_for``: nothing is queued here.
    """
    now = now or timezone.now()
    with transaction.atomic():
        payment = Payment.objects.create(
            owner=owner,
            amount_minor=data.amount_minor,
            currency=data.currency,
            payment_method=data.payment_method,
            payee_name=data.payee_name,
            payee_account=data.payee_account,
            payee_account_last4=account_last4(data.payee_account),
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
    actor = f"staff:{staff_user_id}"
    with transaction.atomic():
        payment = payment_cancel(payment_id=payment_id, actor=actor)
        audit_record(actor=actor, action="payment.canceled", target=payment, data={"status": payment.status})
    return payment


def idempotency_purge_expired(*, now: datetime | None = None, batch_size: int = 1000) -> int:
    """Delete idempotency records past ``expires_at``, in small batches; returns how many.

    Batches keep each delete's locks and WAL short, so this can run every few
    minutes beside live traffic. An in-flight record is never purged before its
    lock expires, whatever its ``expires_at``.
    """
    now = now or timezone.now()
    total = 0
    while True:
        batch = list(
            IdempotencyRecord.objects.filter(expires_at__lte=now, locked_until__lte=now)
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
