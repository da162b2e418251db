"""The only code that changes a payment's status.

Every transition runs in a short transaction on a locked row, is checked
against ``statuses.ALLOWED_TRANSITIONS`` and, where the caller says so, against
the expected current status and attempt number (the fencing token, so a
zombie worker's late write changes nothing), and writes one ``PaymentEvent``
in the same transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from .models import Payment, PaymentEvent
from .statuses import is_allowed


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
