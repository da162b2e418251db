"""Payment states, the legal transitions between them, and the public view.

Internal states are finer than the contract's public ones so that the engine
can tell "queued for its due instant" from "the gateway may have been called".
The table of transitions (``TRANSITIONS``, with the reasons each may record) is
data; ``payments.state_machine`` is the only code that moves a payment along it.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import models


class Status(models.TextChoices):
    SCHEDULED = "scheduled"  # waiting in PostgreSQL for its due instant
    DISPATCHED = "dispatched"  # claimed by the sweep, an execution task is queued; still cancelable
    SUBMITTING = "submitting"  # the gateway may be called from now on: no longer cancelable
    RETRY_SCHEDULED = "retry_scheduled"  # a retryable failure with no charge; next try at next_attempt_at
    RECONCILING = "reconciling"  # the outcome is unknown: ask the gateway before anything else
    DEAD_LETTERED = "dead_lettered"  # the engine gave up: an operator decides
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


class PublicStatus(models.TextChoices):
    SCHEDULED = "scheduled"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


PUBLIC_STATUS: dict[str, str] = {
    Status.SCHEDULED: PublicStatus.SCHEDULED,
    Status.DISPATCHED: PublicStatus.SCHEDULED,
    Status.SUBMITTING: PublicStatus.PROCESSING,
    Status.RETRY_SCHEDULED: PublicStatus.PROCESSING,
    Status.RECONCILING: PublicStatus.PROCESSING,
    Status.DEAD_LETTERED: PublicStatus.PROCESSING,
    Status.SUCCEEDED: PublicStatus.SUCCEEDED,
    Status.FAILED: PublicStatus.FAILED,
    Status.CANCELED: PublicStatus.CANCELED,
}

INTERNAL_STATUSES: dict[str, list[str]] = {}
for _internal, _public in PUBLIC_STATUS.items():
    INTERNAL_STATUSES.setdefault(_public, []).append(_internal)


class EventReason(models.TextChoices):
    """Why a payment moved: the ``reason`` of its ``PaymentEvent`` (public in ``/events``, docs/api.md)."""

    CREATED = "created"  # ∅ → scheduled
    CANCELED = "canceled"  # by its owner (API) or staff (admin)
    DUE = "due"  # the sweep claimed it (→ dispatched), or a worker began its first attempt (→ submitting)
    RETRY = "retry"  # a worker began a new attempt after a retryable failure
    LEASE_EXPIRED = "lease_expired"  # a claim or an attempt outlived its lease (lost message, dead worker)
    GATEWAY_UNAVAILABLE = "gateway_unavailable"  # held back while the gateway's circuit is open
    CHARGED = "charged"  # the gateway charged the attempt
    DECLINED = "declined"  # the gateway declined it
    CHARGE_FOUND = "charge_found"  # reconciliation found the attempt's charge
    DECLINE_FOUND = "decline_found"  # reconciliation found the attempt's decline
    RETRYABLE_FAILURE = "retryable_failure"  # proven uncharged: a new attempt later, under a new key
    OUTCOME_UNKNOWN = "outcome_unknown"  # may have charged: reconcile under the same key
    # → dead_lettered: the same words as ``Payment.dead_letter_reason`` (retry_policy.DeadLetterReason)
    RETRIES_EXHAUSTED = "retries_exhausted"
    RETRY_WINDOW_EXCEEDED = "retry_window_exceeded"
    GATEWAY_REJECTED = "gateway_rejected"
    NEEDS_OPERATOR = "needs_operator"
    RECONCILIATION_INCONCLUSIVE = "reconciliation_inconclusive"
    CHARGE_MISMATCH = "charge_mismatch"
    OPERATOR_REDRIVE = "operator_redrive"  # an operator re-drove a dead-lettered payment
    OPERATOR_RESOLVED = "operator_resolved"  # an operator settled one by hand


@dataclass(frozen=True)
class Transition:
    """A move the state machine may make, and the reasons it may record for it."""

    source: str  # "" for a payment's creation
    target: str
    reasons: frozenset[str]


_ENGINE_GAVE_UP = frozenset(
    {
        EventReason.RETRIES_EXHAUSTED,
        EventReason.RETRY_WINDOW_EXCEEDED,
        EventReason.GATEWAY_REJECTED,
        EventReason.NEEDS_OPERATOR,
        EventReason.RECONCILIATION_INCONCLUSIVE,
        EventReason.CHARGE_MISMATCH,
    }
)
_CHARGED = frozenset({EventReason.CHARGED, EventReason.CHARGE_FOUND})
_DECLINED = frozenset({EventReason.DECLINED, EventReason.DECLINE_FOUND})

# Every transition, with its reasons: ``state_machine`` checks each move against this table (one
# payment in ``apply_transition``, a batch statement before it runs), and tests/conftest.py checks
# that every event any test wrote is in it.
TRANSITIONS: tuple[Transition, ...] = (
    Transition("", Status.SCHEDULED, frozenset({EventReason.CREATED})),
    Transition(Status.SCHEDULED, Status.DISPATCHED, frozenset({EventReason.DUE})),
    Transition(Status.SCHEDULED, Status.CANCELED, frozenset({EventReason.CANCELED})),
    # DISPATCHED → DISPATCHED: the sweep re-dispatches a claim whose lease expired (lost message), or a
    # worker holds it back while the gateway's circuit is open.
    Transition(
        Status.DISPATCHED, Status.DISPATCHED, frozenset({EventReason.LEASE_EXPIRED, EventReason.GATEWAY_UNAVAILABLE})
    ),
    Transition(Status.DISPATCHED, Status.SUBMITTING, frozenset({EventReason.DUE})),
    Transition(Status.DISPATCHED, Status.CANCELED, frozenset({EventReason.CANCELED})),
    Transition(Status.SUBMITTING, Status.SUCCEEDED, _CHARGED),
    Transition(Status.SUBMITTING, Status.FAILED, _DECLINED),
    Transition(Status.SUBMITTING, Status.RETRY_SCHEDULED, frozenset({EventReason.RETRYABLE_FAILURE})),
    Transition(
        Status.SUBMITTING, Status.RECONCILING, frozenset({EventReason.OUTCOME_UNKNOWN, EventReason.LEASE_EXPIRED})
    ),
    Transition(Status.SUBMITTING, Status.DEAD_LETTERED, _ENGINE_GAVE_UP),
    Transition(Status.RETRY_SCHEDULED, Status.SUBMITTING, frozenset({EventReason.RETRY})),
    Transition(Status.RETRY_SCHEDULED, Status.DEAD_LETTERED, _ENGINE_GAVE_UP),
    # Never to submitting or retry_scheduled: an attempt in doubt is only ever re-sent under its own key
    # (reconciliation records outcomes from reconciling); a new attempt needs a person (dead_lettered).
    Transition(Status.RECONCILING, Status.SUCCEEDED, _CHARGED),
    Transition(Status.RECONCILING, Status.FAILED, _DECLINED),
    Transition(Status.RECONCILING, Status.DEAD_LETTERED, _ENGINE_GAVE_UP),
    Transition(Status.DEAD_LETTERED, Status.RETRY_SCHEDULED, frozenset({EventReason.OPERATOR_REDRIVE})),
    Transition(Status.DEAD_LETTERED, Status.RECONCILING, frozenset({EventReason.OPERATOR_REDRIVE})),
    Transition(Status.DEAD_LETTERED, Status.SUCCEEDED, frozenset({EventReason.OPERATOR_RESOLVED})),
    Transition(Status.DEAD_LETTERED, Status.FAILED, frozenset({EventReason.OPERATOR_RESOLVED})),
)
_BY_MOVE: dict[tuple[str, str], Transition] = {(t.source, t.target): t for t in TRANSITIONS}

ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    status: frozenset(t.target for t in TRANSITIONS if t.source == status) for status in Status.values
}

TERMINAL_STATUSES = frozenset(s for s, targets in ALLOWED_TRANSITIONS.items() if not targets)
# Cancel wins only while no gateway submission has begun.
CANCELABLE_STATUSES = frozenset({Status.SCHEDULED, Status.DISPATCHED})


def public_status(status: str) -> str:
    return PUBLIC_STATUS[status]


def is_allowed(from_status: str, to_status: str, reason: str | None = None) -> bool:
    """Whether the table has this move (and, given a reason, with that reason)."""
    transition = _BY_MOVE.get((from_status, to_status))
    return transition is not None and (reason is None or reason in transition.reasons)
