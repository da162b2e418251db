"""Business operations on payments. Views, tasks, admin actions and commands call these."""

from __future__ import annotations

import uuid

from django.db import transaction
from django.utils import timezone

from .error_codes import ErrorCode, ProblemError
from .models import Payment
from .state_machine import apply_transition, lock_payment
from .statuses import CANCELABLE_STATUSES, Status


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
