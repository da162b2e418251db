"""Payment states, the legal transitions between them, and the public view.

Internal states are finer than the contract's public ones so that the engine
can tell "queued for its due instant" from "the gateway may have been called".
The table is data; ``payments.state_machine`` is the only code that moves a
payment along it.
"""

from __future__ import annotations

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

ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    Status.SCHEDULED: frozenset({Status.DISPATCHED, Status.CANCELED}),
    # DISPATCHED → DISPATCHED: the sweep re-dispatches a claim whose lease expired (lost message).
    Status.DISPATCHED: frozenset({Status.DISPATCHED, Status.SUBMITTING, Status.CANCELED}),
    Status.SUBMITTING: frozenset(
        {Status.SUCCEEDED, Status.FAILED, Status.RETRY_SCHEDULED, Status.RECONCILING, Status.DEAD_LETTERED}
    ),
    Status.RETRY_SCHEDULED: frozenset({Status.SUBMITTING, Status.DEAD_LETTERED}),
    # Never to submitting or retry_scheduled: an attempt in doubt is only ever re-sent under its own key
    # (reconciliation records outcomes from reconciling); a new attempt needs a person (dead_lettered).
    Status.RECONCILING: frozenset({Status.SUCCEEDED, Status.FAILED, Status.DEAD_LETTERED}),
    Status.DEAD_LETTERED: frozenset({Status.RETRY_SCHEDULED, Status.RECONCILING, Status.SUCCEEDED, Status.FAILED}),
    Status.SUCCEEDED: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELED: frozenset(),
}

TERMINAL_STATUSES = frozenset(s for s, targets in ALLOWED_TRANSITIONS.items() if not targets)
# Cancel wins only while no gateway submission has begun.
CANCELABLE_STATUSES = frozenset({Status.SCHEDULED, Status.DISPATCHED})


def public_status(status: str) -> str:
    return PUBLIC_STATUS[status]


def is_allowed(from_status: str, to_status: str) -> bool:
    return to_status in ALLOWED_TRANSITIONS[from_status]
