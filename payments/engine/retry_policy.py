"""What the engine does with each gateway outcome, in one table; retry backoff and the reconcile ladder.

The gateway side classifies raw results into ``OutcomeKind`` (``gateways/classification.py``).
This module is the engine side: ``OUTCOME_TABLE`` maps (phase, kind, needs_operator) to the
next state; ``decide`` adds the circumstances (retry budget and age, the idempotency-key
retention bound) and returns the guarded write. ``REDRIVE`` says how an operator may
re-drive each kind of dead letter. docs/operations.md renders these tables for people.

Two rules run through every row:

- A new idempotency key (a new attempt) follows only an outcome that *proves* nothing was
  charged (``RETRYABLE`` received by the lease holder, or ``DECLINED``). Anything that may
  have charged is settled by reconciliation under the *same* key, and an attempt that was
  ever in doubt never gets a new key from the engine.
- The engine gives up (``dead_lettered``, public ``processing``) rather than guess: an
  operator decides, with the reason recorded in ``Payment.dead_letter_reason``.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from django.conf import settings

from payments.gateways.base import ChargeOutcome, ChargeRecord, OutcomeKind
from payments.gateways.classification import decline_outcome
from payments.statuses import EventReason, Status


class Phase(enum.StrEnum):
    SUBMIT = "submit"  # the lease holder's own attempt (dispatched / retry_scheduled → submitting)
    RESEND = "resend"  # reconciliation re-sent the attempt's *same* key after the gateway showed no charge


class DeadLetterReason(enum.StrEnum):
    RETRIES_EXHAUSTED = "retries_exhausted"  # RETRY_MAX_ATTEMPTS proven-uncharged attempts
    RETRY_WINDOW_EXCEEDED = "retry_window_exceeded"  # the next try would start past RETRY_MAX_AGE_SECONDS
    GATEWAY_REJECTED = "gateway_rejected"  # the gateway refused our request (config, credentials): not charged
    NEEDS_OPERATOR = "needs_operator"  # a result a person must read (key names another request, our bug)
    RECONCILIATION_INCONCLUSIVE = "reconciliation_inconclusive"  # the key's retention is running out
    CHARGE_MISMATCH = "charge_mismatch"  # the key names a charge for a different amount / payment


@dataclass(frozen=True)
class Rule:
    to_status: str
    reason: str  # the PaymentEvent reason
    dead_letter_reason: str = ""


_S, _R = Phase.SUBMIT, Phase.RESEND
SUCCEEDED, DECLINED, RETRYABLE, UNKNOWN = (
    OutcomeKind.SUCCEEDED,
    OutcomeKind.DECLINED,
    OutcomeKind.RETRYABLE,
    OutcomeKind.UNKNOWN,
)
_CHARGED = Rule(Status.SUCCEEDED, EventReason.CHARGED)
_DECLINED = Rule(Status.FAILED, EventReason.DECLINED)
# Our request was refused (invalid for the gateway, credentials, permissions): nothing was charged, and it
# is not the payer's fault. Failing it would tell the payer to start over for our mistake; a dead letter
# lets an operator fix the configuration and re-drive it with a new attempt.
_REJECTED = Rule(Status.DEAD_LETTERED, EventReason.GATEWAY_REJECTED, DeadLetterReason.GATEWAY_REJECTED)
_OPERATOR = Rule(Status.DEAD_LETTERED, EventReason.NEEDS_OPERATOR, DeadLetterReason.NEEDS_OPERATOR)

# (phase, kind, needs_operator) → what happens next. RETRY_SCHEDULED and RECONCILING rows are further
# bounded by ``decide`` (retry budget and age; key retention), which may turn them into dead letters.
OUTCOME_TABLE: Final[Mapping[tuple[Phase, OutcomeKind, bool], Rule]] = {
    (_S, SUCCEEDED, False): _CHARGED,
    (_S, SUCCEEDED, True): _CHARGED,  # money moved: that is the outcome, whatever else needs a look
    (_S, DECLINED, False): _DECLINED,
    (_S, DECLINED, True): _REJECTED,
    (_S, RETRYABLE, False): Rule(
        Status.RETRY_SCHEDULED, EventReason.RETRYABLE_FAILURE
    ),  # proven uncharged: new key later
    (_S, RETRYABLE, True): _OPERATOR,
    (_S, UNKNOWN, False): Rule(Status.RECONCILING, EventReason.OUTCOME_UNKNOWN),  # may have charged: same key only
    (_S, UNKNOWN, True): _OPERATOR,  # may have charged *and* a person must look; re-drive reconciles first
    (_R, SUCCEEDED, False): _CHARGED,
    (_R, SUCCEEDED, True): _CHARGED,
    (_R, DECLINED, False): _DECLINED,
    # Once in doubt, always the same key: a refused re-send proves only that *this* request did not
    # charge, not that an earlier one with the key is not still in flight. A gateway that refuses our
    # request (config, credentials) needs a person, and the re-drive reconciles first, never a new
    # key (gateway_rejected would re-drive with one). The rest ask again on the ladder.
    (_R, DECLINED, True): _OPERATOR,
    (_R, RETRYABLE, False): Rule(Status.RECONCILING, "resend_inconclusive"),
    (_R, RETRYABLE, True): _OPERATOR,
    (_R, UNKNOWN, False): Rule(Status.RECONCILING, "resend_inconclusive"),
    (_R, UNKNOWN, True): _OPERATOR,
}


class Redrive(enum.StrEnum):
    NEW_ATTEMPT = "new_attempt"  # the last attempt is proven uncharged: retry_scheduled, a new key
    RECONCILE = "reconcile"  # the last attempt may have charged: reconciling, the same key, first
    REFUSE = "refuse"  # re-driving cannot help: resolve by hand


# How an operator's re-drive continues each dead letter. Any other reason (or none) reconciles: never a
# blind new key.
REDRIVE: Final[Mapping[str, Redrive]] = {
    DeadLetterReason.RETRIES_EXHAUSTED: Redrive.NEW_ATTEMPT,
    DeadLetterReason.RETRY_WINDOW_EXCEEDED: Redrive.NEW_ATTEMPT,
    DeadLetterReason.GATEWAY_REJECTED: Redrive.NEW_ATTEMPT,
    DeadLetterReason.NEEDS_OPERATOR: Redrive.RECONCILE,
    DeadLetterReason.RECONCILIATION_INCONCLUSIVE: Redrive.RECONCILE,
    # The key names someone else's charge: another lookup finds the same. Verify and resolve.
    DeadLetterReason.CHARGE_MISMATCH: Redrive.REFUSE,
}


def redrive_kind(dead_letter_reason: str) -> Redrive:
    return REDRIVE.get(dead_letter_reason, Redrive.RECONCILE)


# --- Backoff -----------------------------------------------------------------------------------------


def backoff_ceiling(retry_number: int, *, base: float, cap: float) -> float:
    """``min(cap, base * 2**n)`` for the n-th retry (0 for the first), without overflowing for large n."""
    if retry_number < 0:
        raise ValueError("retry_number must be >= 0")
    if base <= 0 or cap <= 0:
        return 0.0
    # 2.0 ** 1000 is finite; a product past the float range is inf, and min() turns it into the cap.
    return float(min(cap, base * 2.0 ** min(retry_number, 1000)))


def retry_delay_seconds(
    retry_number: int,
    retry_after_seconds: float | None = None,
    *,
    base: float | None = None,
    cap: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Full jitter: ``uniform(0, min(cap, base * 2**n))``, but never earlier than the gateway's ``Retry-After``."""
    base = settings.RETRY_BASE_SECONDS if base is None else base
    cap = settings.RETRY_CAP_SECONDS if cap is None else cap
    ceiling = backoff_ceiling(retry_number, base=base, cap=cap)
    delay = (rng or random).uniform(0.0, ceiling)
    if retry_after_seconds is not None and retry_after_seconds > delay:
        delay = retry_after_seconds
    return delay


def reconcile_delay_seconds(tries: int, ladder: Sequence[float] | None = None) -> float:
    """Wait before reconciliation try number ``tries`` (0 for the first): the ladder's rung, the last repeating."""
    rungs = list(settings.RECONCILE_LADDER_SECONDS if ladder is None else ladder)
    if not rungs:
        raise ValueError("RECONCILE_LADDER_SECONDS is empty")
    return float(rungs[min(tries, len(rungs) - 1)])


def idempotency_key_retention() -> timedelta:
    return timedelta(hours=settings.GATEWAY_IDEMPOTENCY_RETENTION_HOURS)


def reconcile_deadline(first_sent_at: datetime) -> datetime:
    """The last instant a reconciliation may re-send (or trust an empty lookup) for a key first sent then.

    A key the gateway has forgotten proves nothing: a lookup finds nothing and a re-send charges
    again. So the engine stops at ``RECONCILE_RETENTION_SAFETY`` of the retention (a margin for clocks)
    and hands the payment to an operator.
    """
    safety = float(settings.RECONCILE_RETENTION_SAFETY)
    return first_sent_at + idempotency_key_retention() * safety


# --- Decisions -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """The next state of one attempt, and what to write with it (``execution`` turns it into an OutcomeWrite)."""

    to_status: str
    reason: str
    dead_letter_reason: str = ""
    failure_code: str = ""
    failure_message: str = ""
    gateway_reference: str = ""
    next_attempt_in: timedelta | None = None
    data: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class RetryBudget:
    """Where the current retry budget started: the due instant, or an operator's re-drive."""

    attempt: int  # the attempt whose outcome this is (1-based)
    first_attempt: int  # attempts before the budget began (``Payment.redrive_attempt``)
    started_at: datetime  # ``redriven_at`` or ``scheduled_for``

    @property
    def attempts_used(self) -> int:
        return self.attempt - self.first_attempt


def _outcome_data(outcome: ChargeOutcome) -> dict[str, Any]:
    data: dict[str, Any] = {"outcome": str(outcome.kind)}
    if outcome.reference:
        data["gateway_reference"] = outcome.reference
    if outcome.failure_code:
        data["failure_code"] = outcome.failure_code
    if outcome.needs_operator:
        data["needs_operator"] = True
    if outcome.retry_after_seconds is not None:
        data["retry_after_seconds"] = outcome.retry_after_seconds
    return data


def decide(
    outcome: ChargeOutcome,
    *,
    phase: Phase,
    budget: RetryBudget,
    now: datetime,
    reconcile_tries: int = 0,
    reconcile_deadline_at: datetime | None = None,
    rng: random.Random | None = None,
) -> Decision:
    """The table's row for this outcome, bounded by the retry budget (SUBMIT) or key retention (RESEND)."""
    data = _outcome_data(outcome)
    if outcome.in_progress and outcome.kind is OutcomeKind.UNKNOWN and not outcome.needs_operator:
        # Accepted and still processing: poll it on its own schedule, no ladder, no retention bound.
        return processing_decision(started_at=budget.started_at, now=now, data=data)
    rule = OUTCOME_TABLE[(phase, outcome.kind, outcome.needs_operator)]
    if rule.to_status == Status.SUCCEEDED:
        return Decision(rule.to_status, rule.reason, gateway_reference=outcome.reference, data=data)
    if rule.to_status == Status.FAILED:
        return Decision(
            rule.to_status,
            rule.reason,
            gateway_reference=outcome.reference,
            failure_code=outcome.failure_code or "card_declined",
            failure_message=outcome.failure_message or "The payment method was declined.",
            data=data,
        )
    if rule.to_status == Status.DEAD_LETTERED:
        # Only user-safe codes reach failure_code/message (classification guarantees that for its own).
        return Decision(
            rule.to_status,
            rule.reason,
            dead_letter_reason=rule.dead_letter_reason,
            failure_code=outcome.failure_code,
            failure_message=outcome.failure_message,
            data=data,
        )
    if rule.to_status == Status.RETRY_SCHEDULED:
        return retry_decision(outcome, rule=rule, budget=budget, now=now, data=data, rng=rng)
    # RECONCILING: ask again on the ladder while the key's retention lasts.
    return reconcile_decision(
        reason=rule.reason, tries=reconcile_tries, now=now, deadline=reconcile_deadline_at, data=data
    )


def retry_decision(
    outcome: ChargeOutcome,
    *,
    rule: Rule,
    budget: RetryBudget,
    now: datetime,
    data: dict[str, Any],
    rng: random.Random | None = None,
) -> Decision:
    if budget.attempts_used >= settings.RETRY_MAX_ATTEMPTS:
        return Decision(
            Status.DEAD_LETTERED,
            DeadLetterReason.RETRIES_EXHAUSTED,
            dead_letter_reason=DeadLetterReason.RETRIES_EXHAUSTED,
            data={**data, "attempts_used": budget.attempts_used},
        )
    retry_number = max(0, budget.attempts_used - 1)
    delay = retry_delay_seconds(retry_number, outcome.retry_after_seconds, rng=rng)
    if now + timedelta(seconds=delay) > budget.started_at + timedelta(seconds=settings.RETRY_MAX_AGE_SECONDS):
        return Decision(
            Status.DEAD_LETTERED,
            DeadLetterReason.RETRY_WINDOW_EXCEEDED,
            dead_letter_reason=DeadLetterReason.RETRY_WINDOW_EXCEEDED,
            data={**data, "attempts_used": budget.attempts_used},
        )
    return Decision(
        rule.to_status,
        rule.reason,
        next_attempt_in=timedelta(seconds=delay),
        # What the backoff drew, so anyone can check that the next attempt waited for it.
        data={
            **data,
            "retry_number": retry_number,
            "retry_in_seconds": round(delay, 6),
            "backoff_ceiling_seconds": backoff_ceiling(
                retry_number, base=settings.RETRY_BASE_SECONDS, cap=settings.RETRY_CAP_SECONDS
            ),
        },
    )


def reconcile_decision(
    *, reason: str, tries: int, now: datetime, deadline: datetime | None, data: Mapping[str, Any] | None = None
) -> Decision:
    """Stay ``reconciling`` and ask again after the ladder's next rung, but never past the retention deadline."""
    delay = timedelta(seconds=reconcile_delay_seconds(tries))
    if deadline is not None:
        if now >= deadline:
            return inconclusive(data)
        delay = min(delay, deadline - now)  # one last try at the deadline, while the key is still remembered
    return Decision(
        Status.RECONCILING,
        reason,
        next_attempt_in=delay,
        data={**(data or {}), "reconcile_try": tries, "next_try_in_seconds": round(delay.total_seconds(), 6)},
    )


def inconclusive(data: Mapping[str, Any] | None = None) -> Decision:
    return Decision(
        Status.DEAD_LETTERED,
        DeadLetterReason.RECONCILIATION_INCONCLUSIVE,
        dead_letter_reason=DeadLetterReason.RECONCILIATION_INCONCLUSIVE,
        data={**(data or {}), "retention_hours": settings.GATEWAY_IDEMPOTENCY_RETENTION_HOURS},
    )


# A charge the gateway accepted and is still processing (Stripe ``processing``): the ``data`` flag of its
# decision (the event reason stays ``outcome_unknown``), and the ledger record's status.
PROCESSING = "processing"


def processing_decision(*, started_at: datetime, now: datetime, data: Mapping[str, Any] | None = None) -> Decision:
    """A charge still processing at the gateway (SEPA, ACH: days): poll it every ``GATEWAY_PROCESSING_POLL_SECONDS``.

    Not a failure and not a rung of the reconcile ladder: the charge exists, so there is nothing to
    re-send and the key's retention does not matter. Past ``GATEWAY_PROCESSING_MAX_DAYS`` from the due
    instant (or re-drive) a person looks (``needs_operator``).
    """
    if now >= started_at + timedelta(days=float(settings.GATEWAY_PROCESSING_MAX_DAYS)):
        return Decision(
            Status.DEAD_LETTERED,
            DeadLetterReason.NEEDS_OPERATOR,
            dead_letter_reason=DeadLetterReason.NEEDS_OPERATOR,
            data={**(data or {}), PROCESSING: True, "processing_max_days": settings.GATEWAY_PROCESSING_MAX_DAYS},
        )
    delay = timedelta(seconds=float(settings.GATEWAY_PROCESSING_POLL_SECONDS))
    return Decision(
        Status.RECONCILING,
        EventReason.OUTCOME_UNKNOWN,
        next_attempt_in=delay,
        data={**(data or {}), PROCESSING: True, "next_try_in_seconds": delay.total_seconds()},
    )


def record_decision(
    record: ChargeRecord,
    *,
    payment_id: str,
    amount: Any,
    currency: str,
    started_at: datetime | None = None,
    now: datetime | None = None,
) -> Decision:
    """A charge the gateway holds under the attempt's key is the attempt's outcome, if it is ours."""
    data = {"gateway_reference": record.reference, "found_by": "lookup"}
    if (
        (record.payment_id and record.payment_id != payment_id)
        or record.amount != amount
        or record.currency != currency
    ):
        # The key names a different charge: never settle a payment on someone else's money.
        return Decision(
            Status.DEAD_LETTERED,
            DeadLetterReason.CHARGE_MISMATCH,
            dead_letter_reason=DeadLetterReason.CHARGE_MISMATCH,
            data=data,
        )
    if record.status == "succeeded":
        return Decision(Status.SUCCEEDED, EventReason.CHARGE_FOUND, gateway_reference=record.reference, data=data)
    if record.status == PROCESSING:
        current = now or datetime.now(tz=UTC)
        return processing_decision(started_at=started_at or current, now=current, data=data)
    # The ledger's raw decline code goes through the same user-safe mapping as a live answer.
    safe = decline_outcome(record.failure_code, reference=record.reference)
    return Decision(
        Status.FAILED,
        EventReason.DECLINE_FOUND,
        gateway_reference=record.reference,
        failure_code=safe.failure_code,
        failure_message=safe.failure_message,
        data=data,
    )
