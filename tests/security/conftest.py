"""Fixtures for the security tests: sensitive values, payments, staff users (verified clients: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Group

from accounts.models import User
from payments.models import Payment
from tests.factories import PaymentFactory

# Values that must never appear in clear: in the database, the logs or Sentry.
PAN = "4111 1111 1111 1111"
PAN_COMPACT = "4111111111111111"
IBAN = "DE89370400440532013000"
IBAN_GROUPED = "DE89 3704 0044 0532 0130 00"
PAYEE_NAME = "Zebulon Quartermaine"
PAYMENT_METHOD = "pm_card_visa_Qx7Lw2"
API_TOKEN = "spt_Kq9vXb3N2mZt8RwLpE5sYh0cJd4fGa1uIo6eWn7rTyU"
BEARER = f"Bearer {API_TOKEN}"
DESCRIPTION = "Rent for flat Rosebud-4B"
METADATA = {"tenant": "Quartermaine household", "unit": "Rosebud-4B"}
STAFF_PASSWORD = "correct horse battery staple"

# What a raw table read must not contain (values, and distinctive pieces of them).
PLAINTEXT_FRAGMENTS = [
    PAYEE_NAME,
    "Quartermaine",
    IBAN,
    "DE89",
    PAYMENT_METHOD,
    "pm_card",
    DESCRIPTION,
    "Rosebud",
    "tenant",
    "household",
]


@pytest.fixture
def make_payment(make_user: Callable[..., User]) -> Callable[..., Payment]:
    def make(owner: User | None = None, **overrides: Any) -> Payment:
        fields: dict[str, Any] = {
            "owner": owner or make_user(),
            "payee_name": PAYEE_NAME,
            "payee_account": IBAN,
            "description": DESCRIPTION,
            "metadata": dict(METADATA),
            "payment_method": PAYMENT_METHOD,
        }
        payment: Payment = PaymentFactory.create(**(fields | overrides))
        return payment

    return make


@pytest.fixture
def make_staff(db: None) -> Callable[..., User]:
    counter = iter(range(1, 1_000_000))

    def make(*groups: str, username: str | None = None, password: str = STAFF_PASSWORD) -> User:
        user = User.objects.create_user(username=username or f"staff{next(counter)}", password=password, is_staff=True)
        for name in groups:
            user.groups.add(Group.objects.get(name=name))
        return user

    return make


@pytest.fixture
def staff_groups(db: None) -> None:
    """The role groups, from the migration's own code: a transactional test elsewhere may have flushed them."""
    import importlib
    from types import SimpleNamespace

    from django.db import connection
    from django.db.migrations.loader import MigrationLoader

    migration = importlib.import_module("accounts.migrations.0002_staff_roles")
    state_apps = MigrationLoader(None, ignore_no_migrations=True).project_state(("accounts", "0002_staff_roles")).apps
    migration.create_roles(state_apps, SimpleNamespace(connection=connection))
