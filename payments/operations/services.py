"""Operators' services for dead-lettered payments: re-drive, resolve, inspect.

Called by the operations admin (``payments/operations/admin.py``) and by
``manage.py dead_letters``. Each action is one short transaction on the locked
row: the status change goes through ``state_machine.apply_transition`` (a
``PaymentEvent``) and an ``AuditEvent`` names the operator and their reason.

- **Re-drive** continues the payment the only safe way for its dead-letter reason
  (``retry_policy.REDRIVE``): a *new attempt* only when the last one is proven
  uncharged (retries exhausted, our request rejected); otherwise *reconciliation
  first* under the same key, and only while the gateway still remembers that key.
  A re-drive starts a fresh retry budget (attempts and age count from it).
- **Resolve** ends it by hand after the operator checked the gateway's own records:
  ``succeeded`` needs the gateway's charge reference; ``failed`` shows the payer a
  generic, safe message (the operator's reason goes to the audit trail only).
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet

from audit.models import AuditEvent
from audit.services import audit_record
from payments.engine.retry_policy import Redrive, reconcile_deadline, redrive_kind
from payments.gateways.classification import GATEWAY_REJECTED, GATEWAY_REJECTED_MESSAGE
from payments.models import Payment, PaymentEvent
from payments.state_machine import apply_transition, database_now, lock_payment
from payments.statuses import EventReason, Status

# What the payer sees for a payment an operator resolved as failed (unless a safe code is already set).
RESOLVED_FAILURE_CODE = "processing_failed"
RESOLVED_FAILURE_MESSAGE = "The payment could not be completed. Nothing was charged."
# Failure codes that stay when an operator resolves as failed: already written for the payer.
_KEPT_FAILURE_CODES = frozenset({GATEWAY_REJECTED})
MAX_REASON_LENGTH = 500


class OperationRefused(Exception):
    """The operator's action is not allowed for this payment now; ``code`` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _reason(reason: str) -> str:
    reason = " ".join(reason.split())
    if not reason:
        raise OperationRefused("reason_required", "Give a reason (a ticket reference, what you checked).")
    return reason[:MAX_REASON_LENGTH]


def _locked_dead_letter(payment_id: uuid.UUID | str) -> Payment:
    try:
        payment = lock_payment(payment_id)
    except (Payment.DoesNotExist, ValueError, ValidationError):
        raise OperationRefused("not_found", f"No payment {payment_id}.") from None
    if payment.status != Status.DEAD_LETTERED:
        raise OperationRefused(
            "not_dead_lettered", f"Payment {payment.pk} is {payment.status}, not dead_lettered: nothing to do."
        )
    return payment


def reconcile_lease_live_until(payment: Payment) -> datetime | None:
    """Until when a reconciliation task claimed before the dead-letter may still be re-sending, if at all.

    A reconcile task holds its claim for ``SUBMIT_LEASE``; a task whose lease ran out while it was
    still working may have had its re-send in flight when another task dead-lettered the payment.
    No send starts on an expired lease and none outlives one (``docs/execution.md``), so once
    ``SUBMIT_LEASE`` has passed since the dead-letter, every earlier claim has ended.
    """
    ends: list[datetime] = []
    if payment.lease_expires_at is not None:
        ends.append(payment.lease_expires_at)
    dead_lettered_at = (
        PaymentEvent.objects.filter(
            payment=payment,
            attempt=payment.attempts,
            from_status=Status.RECONCILING,
            to_status=Status.DEAD_LETTERED,
        )
        .order_by("-at")
        .values_list("at", flat=True)
        .first()
    )
    if dead_lettered_at is not None:
        ends.append(dead_lettered_at + settings.SUBMIT_LEASE)
    return max(ends) if ends else None


def _first_submitted_at(payment: Payment) -> Any:
    from payments.engine.execution import first_submitted_at  # execution imports much; only needed here

    return first_submitted_at([payment])[payment.pk]


def dead_letter_redrive(*, payment_id: uuid.UUID | str, actor: str, reason: str) -> Payment:
    """Send a dead-lettered payment back to the engine, by the safe path for its reason."""
    why = _reason(reason)
    with transaction.atomic():
        payment = _locked_dead_letter(payment_id)
        route = redrive_kind(payment.dead_letter_reason)
        now = database_now()
        data: dict[str, Any] = {"route": str(route), "dead_letter_reason": payment.dead_letter_reason}
        if route == Redrive.REFUSE:
            raise OperationRefused(
                "redrive_refused",
                f"A {payment.dead_letter_reason} dead letter cannot be re-driven: compare the charge at the gateway "
                "with the payment and resolve it (dead_letters resolve).",
            )
        changes: dict[str, Any] = {
            "lease_expires_at": None,
            "next_attempt_at": now,
            "dead_letter_reason": "",
            "redrive_attempt": payment.attempts,
            "redriven_at": now,
            "failure_code": "",
            "failure_message": "",
        }
        if route == Redrive.RECONCILE:
            deadline = reconcile_deadline(_first_submitted_at(payment))
            if now >= deadline:
                raise OperationRefused(
                    "retention_expired",
                    f"Attempt {payment.attempts}'s idempotency key is past the gateway's retention "
                    f"(reconciliation stops at {deadline.isoformat()}): an empty lookup proves nothing and a "
                    "re-send could charge twice. Check the gateway's records by payment id and resolve it.",
                )
            to = Status.RECONCILING
            changes["reconcile_attempts"] = 0
            data["key_retained_until"] = deadline.isoformat()
        else:
            to = Status.RETRY_SCHEDULED
        apply_transition(
            payment,
            to=to,
            actor=actor,
            reason=EventReason.OPERATOR_REDRIVE,
            expected_from={Status.DEAD_LETTERED},
            changes=changes,
            data=data,
            now=now,
        )
        audit_record(actor=actor, action="payment.dead_letter_redriven", target=payment, data={**data, "reason": why})
    return payment


class Resolution(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def dead_letter_resolve(
    *, payment_id: uuid.UUID | str, actor: str, outcome: str, reason: str, reference: str = ""
) -> Payment:
    """End a dead-lettered payment by hand, after checking the gateway's records.

    ``succeeded`` requires the gateway's charge reference (what proves the money moved);
    ``failed`` asserts that nothing was charged.
    """
    why = _reason(reason)
    reference = reference.strip()
    if outcome not in (Resolution.SUCCEEDED, Resolution.FAILED):
        raise OperationRefused("invalid_outcome", "Resolve as succeeded or failed.")
    if outcome == Resolution.SUCCEEDED and not reference:
        raise OperationRefused("reference_required", "Resolving as succeeded needs the gateway's charge reference.")
    if len(reference) > 100:
        raise OperationRefused("invalid_reference", "A gateway reference is at most 100 characters.")
    with transaction.atomic():
        payment = _locked_dead_letter(payment_id)
        now = database_now()
        if outcome == Resolution.FAILED:
            live_until = reconcile_lease_live_until(payment)
            if live_until is not None and now < live_until:
                raise OperationRefused(
                    "reconcile_lease_live",
                    f"A reconciliation of attempt {payment.attempts} may still be re-sending it until "
                    f"{live_until.isoformat()} (its lease): a charge could still land. Resolve it as failed after "
                    "that instant, once the gateway's records show no charge.",
                )
        changes: dict[str, Any] = {"lease_expires_at": None, "next_attempt_at": None}
        if reference:
            changes["gateway_reference"] = reference
        if outcome == Resolution.SUCCEEDED:
            changes |= {"executed_at": now, "failure_code": "", "failure_message": ""}
            to = Status.SUCCEEDED
        else:
            keep = payment.failure_code in _KEPT_FAILURE_CODES
            changes["failure_code"] = payment.failure_code if keep else RESOLVED_FAILURE_CODE
            changes["failure_message"] = (
                (payment.failure_message or GATEWAY_REJECTED_MESSAGE) if keep else RESOLVED_FAILURE_MESSAGE
            )
            to = Status.FAILED
        data = {"dead_letter_reason": payment.dead_letter_reason, "gateway_reference": reference}
        apply_transition(
            payment,
            to=to,
            actor=actor,
            reason=EventReason.OPERATOR_RESOLVED,
            expected_from={Status.DEAD_LETTERED},
            changes=changes,
            data=data,
            now=now,
        )
        audit_record(
            actor=actor,
            action="payment.dead_letter_resolved",
            target=payment,
            data={**data, "as": outcome, "reason": why},
        )
    return payment


# --- Selectors ---------------------------------------------------------------------------------------------


def dead_lettered_payments(*, reason: str = "") -> QuerySet[Payment]:
    queryset = Payment.objects.filter(status=Status.DEAD_LETTERED)
    if reason:
        queryset = queryset.filter(dead_letter_reason=reason)
    return queryset.order_by("updated_at", "id")


def dead_letter_detail(payment_id: uuid.UUID | str) -> dict[str, Any]:
    """What an operator needs to decide: no personal data (no payee, no payment method)."""
    try:
        payment = Payment.objects.get(pk=payment_id)
    except (Payment.DoesNotExist, ValueError, ValidationError):
        raise OperationRefused("not_found", f"No payment {payment_id}.") from None
    events = PaymentEvent.objects.filter(payment=payment).order_by("at", "id")
    audits = AuditEvent.objects.filter(target_type=payment._meta.label_lower, target_id=str(payment.pk))
    route = redrive_kind(payment.dead_letter_reason) if payment.status == Status.DEAD_LETTERED else None
    return {
        "id": str(payment.pk),
        "status": payment.status,
        "dead_letter_reason": payment.dead_letter_reason,
        "redrive": str(route) if route else None,
        "amount": payment.amount_display,
        "currency": payment.currency,
        "scheduled_for": payment.scheduled_for.isoformat(),
        "attempts": payment.attempts,
        "idempotency_key": payment.gateway_idempotency_key() if payment.attempts else None,
        "gateway_reference": payment.gateway_reference or None,
        "failure_code": payment.failure_code or None,
        "reconcile_attempts": payment.reconcile_attempts,
        "updated_at": payment.updated_at.isoformat(),
        "events": [
            {
                "at": e.at.isoformat(),
                "from": e.from_status,
                "to": e.to_status,
                "reason": e.reason,
                "actor": e.actor,
                "attempt": e.attempt,
                "data": e.data,
            }
            for e in events
        ],
        "audit": [{"at": a.at.isoformat(), "actor": a.actor, "action": a.action, "data": a.data} for a in audits],
    }
