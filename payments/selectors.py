"""Reads for the API: always scoped to the requesting user.

Another user's payment and a payment that does not exist are the same thing
here (``not_found``), so the API offers no existence oracle.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Q, QuerySet

from accounts.models import User
from common.error_codes import ErrorCode, ProblemError

from . import state_machine
from .models import Payment, PaymentEvent


@dataclass(frozen=True)
class Cursor:
    """The sort key of the last row already seen."""

    scheduled_for: datetime
    id: uuid.UUID


def database_now() -> datetime:
    """The database's clock: the one reference for "now" in request handling.

    Every web process compares against the same clock as the execution engine
    (``state_machine.database_now``, which this delegates to), so a web host with
    a skewed clock cannot accept a payment that is already due, or misjudge an
    idempotency claim's age. Tests freeze this function.
    """
    return state_machine.database_now()


def _not_found() -> ProblemError:
    return ProblemError(ErrorCode.NOT_FOUND, 404, "No such payment.")


def parse_payment_id(raw: str) -> uuid.UUID:
    """A path segment as a payment id; anything that is not a UUID is simply not found."""
    if len(raw) > 64:
        raise _not_found()
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise _not_found() from None


def payment_get_for_owner(*, owner: User, payment_id: str | uuid.UUID) -> Payment:
    pk = payment_id if isinstance(payment_id, uuid.UUID) else parse_payment_id(payment_id)
    payment = Payment.objects.filter(owner=owner, pk=pk).first()
    if payment is None:
        raise _not_found()
    return payment


@dataclass(frozen=True)
class PaymentPage:
    results: list[Payment]
    next_cursor: Cursor | None


def payment_list_for_owner(
    *,
    owner: User,
    statuses: Collection[str] | None = None,
    scheduled_after: datetime | None = None,
    scheduled_before: datetime | None = None,
    after: Cursor | None = None,
    limit: int,
) -> PaymentPage:
    """One page of the owner's payments ordered by ``(scheduled_for, id)``.

    ``statuses`` are internal statuses; ``scheduled_after`` is inclusive and
    ``scheduled_before`` exclusive (a half-open range); ``after`` resumes
    strictly after a row's sort key.
    """
    queryset: QuerySet[Payment] = Payment.objects.filter(owner=owner)
    if statuses is not None:
        queryset = queryset.filter(status__in=list(statuses))
    if scheduled_after is not None:
        queryset = queryset.filter(scheduled_for__gte=scheduled_after)
    if scheduled_before is not None:
        queryset = queryset.filter(scheduled_for__lt=scheduled_before)
    if after is not None:
        # (scheduled_for, id) > (s, i), written so the leading ">= s" bounds the index range.
        queryset = queryset.filter(scheduled_for__gte=after.scheduled_for).filter(
            Q(scheduled_for__gt=after.scheduled_for) | Q(id__gt=after.id)
        )
    rows = list(queryset.order_by("scheduled_for", "id")[: limit + 1])
    if len(rows) <= limit:
        return PaymentPage(results=rows, next_cursor=None)
    rows = rows[:limit]
    last = rows[-1]
    return PaymentPage(results=rows, next_cursor=Cursor(scheduled_for=last.scheduled_for, id=last.id))


def payment_events_for_owner(*, owner: User, payment_id: str | uuid.UUID) -> list[PaymentEvent]:
    """The payment's timeline, oldest first; 404 for another user's payment."""
    payment = payment_get_for_owner(owner=owner, payment_id=payment_id)
    return list(PaymentEvent.objects.filter(payment=payment).order_by("at", "id"))
