"""Test data with the suite's usual values: users, payment drafts and payment rows (factory_boy).

- ``schedule_payment(owner, **fields)``: a payment scheduled the way the API does
  (``payment_create``: encrypted fields, payee HMAC, first timeline event) from a ``PaymentDraftFactory``.
- ``PaymentFactory``: a row written straight through the model (no event), for tests that want only the row.
- ``advance(payment_id, to)``: move a payment through the state machine with a reason of the
  table (``statuses.TRANSITIONS``), for tests that only need it in a state.

Encrypted fields always go through the model's fields, as in production.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone
from factory.base import Factory
from factory.declarations import LazyAttribute, LazyFunction, Sequence, SubFactory
from factory.django import DjangoModelFactory

from accounts.models import User
from payments import state_machine
from payments.models import Payment
from payments.services import PaymentDraft, payment_create
from payments.statuses import TRANSITIONS

PAYEE_NAME = "ACME Utilities"
PAYEE_ACCOUNT = "DE89370400440532013000"


def in_three_days() -> datetime:
    return timezone.now() + timedelta(days=3)


class UserFactory(DjangoModelFactory[User]):
    class Meta:
        model = User

    username = Sequence(lambda n: f"factory-user{n}")

    @classmethod
    def _create(cls, model_class: type[User], *args: Any, **kwargs: Any) -> User:
        return model_class.objects.create_user(*args, **kwargs)


class PaymentDraftFactory(Factory[PaymentDraft]):
    """What ``serializers.validate_payment_create`` hands the service; ``scheduled_local`` follows ``scheduled_for``."""

    class Meta:
        model = PaymentDraft

    amount_minor = 12550
    currency = "EUR"
    payment_method = "pm_card_visa"
    payee_name = PAYEE_NAME
    payee_account = PAYEE_ACCOUNT
    description = ""
    metadata: Any = LazyFunction(dict)
    scheduled_for: Any = LazyFunction(in_three_days)
    time_zone = "UTC"
    scheduled_local: Any = LazyAttribute(lambda draft: draft.scheduled_for.isoformat())


def schedule_payment(owner: User, *, actor: str = "test", **fields: Any) -> Payment:
    """A payment scheduled through ``payment_create``, from a draft with ``fields`` overriding the defaults."""
    draft: PaymentDraft = PaymentDraftFactory.build(**fields)
    return payment_create(owner=owner, data=draft, actor=actor)


class PaymentFactory(DjangoModelFactory[Payment]):
    """A payment row created through the model; ``payee_account_last4`` follows ``payee_account``."""

    class Meta:
        model = Payment

    owner: Any = SubFactory(UserFactory)
    amount_minor = 12550
    currency = "EUR"
    payee_name = PAYEE_NAME
    payee_account = PAYEE_ACCOUNT
    payee_account_last4: Any = LazyAttribute(lambda payment: payment.payee_account[-4:])
    payment_method = "pm_card_visa"
    scheduled_for: Any = LazyFunction(in_three_days)
    time_zone = "UTC"
    scheduled_local: Any = LazyAttribute(lambda payment: payment.scheduled_for.isoformat())


def advance(payment_id: Any, to: str, *, actor: str = "test", changes: dict[str, Any] | None = None) -> Payment:
    """``state_machine.transition`` with the first reason the table gives this move."""
    current = Payment.objects.values_list("status", flat=True).get(pk=payment_id)
    reasons = next(t.reasons for t in TRANSITIONS if (t.source, t.target) == (current, to))
    return state_machine.transition(payment_id, to=to, actor=actor, reason=sorted(reasons)[0], changes=changes)
