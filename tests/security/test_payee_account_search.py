"""Support finds payments by payee account through a keyed hash (HMAC): the account is never stored in clear."""

from __future__ import annotations

import hashlib
import hmac
import importlib
from collections.abc import Callable
from io import StringIO
from types import SimpleNamespace

import pytest
from django.apps import apps
from django.core.management import call_command
from django.db import connection
from django.test import Client

from accounts.models import User
from common.crypto import normalize_account, payee_account_hmac
from payments.models import Payment
from tests.factories import schedule_payment

from .conftest import IBAN, IBAN_GROUPED

pytestmark = pytest.mark.django_db

SEARCH = "/admin/payments/payment/?q="
migration = importlib.import_module("payments.migrations.0003_payee_account_hmac")


def schedule(owner: User, account: str = IBAN) -> Payment:
    return schedule_payment(owner, payee_account=account)


def raw_row(payment: Payment) -> tuple[str, str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT payee_account, payee_account_hmac FROM payments_payment WHERE id = %s", [payment.pk])
        row = cursor.fetchone()
    assert row is not None
    return row[0], row[1]


def test_the_table_holds_the_hmac_and_ciphertext_never_the_account(make_user, settings):
    payment = schedule(make_user(), IBAN_GROUPED.lower())

    stored_account, stored_hmac = raw_row(payment)

    expected = hmac.new(settings.FIELD_HMAC_KEY.encode(), IBAN.encode(), hashlib.sha256).hexdigest()
    assert stored_hmac == expected  # HMAC-SHA256 of the normalised account, under FIELD_HMAC_KEY
    assert stored_account.startswith("enc1:")
    for fragment in (IBAN, IBAN.lower(), IBAN_GROUPED, "0532013000", hashlib.sha256(IBAN.encode()).hexdigest()):
        assert fragment not in stored_account + stored_hmac


def test_the_hmac_ignores_spacing_and_case_and_depends_on_the_key(settings):
    assert normalize_account(" de89 3704\t0044 0532 0130 00 ") == IBAN
    assert payee_account_hmac(IBAN_GROUPED.lower()) == payee_account_hmac(IBAN)
    assert payee_account_hmac("123-456") != payee_account_hmac("123456")  # only whitespace is dropped
    before = payee_account_hmac(IBAN)
    settings.FIELD_HMAC_KEY = "another-key-" + "x" * 32
    assert payee_account_hmac(IBAN) != before


@pytest.fixture
def support(staff_groups: None, make_staff: Callable[..., User], verified_client: Callable[[User], Client]) -> Client:
    return verified_client(make_staff("support"))


def test_support_finds_a_payment_by_its_full_account_only(support, make_user):
    wanted = schedule(make_user(), IBAN)
    other = schedule(make_user(), "GB82WEST12345698765432")

    def found(term: str) -> set[str]:
        page = support.get(SEARCH + term.replace(" ", "+")).content.decode()
        return {str(p.pk) for p in (wanted, other) if str(p.pk) in page}

    # the full account, however it is typed
    assert found(IBAN) == {str(wanted.pk)}
    assert found(IBAN_GROUPED) == {str(wanted.pk)}
    assert found(IBAN.lower()) == {str(wanted.pk)}
    # a wrong digit, a part of it or its last four find nothing (exact match only)
    assert found(IBAN[:-1] + "1") == set()
    assert found(IBAN[-10:]) == set()
    assert found(IBAN[:12]) == set()
    # the usual searches still work
    assert found(str(other.pk)) == {str(other.pk)}


def test_the_migration_backfills_existing_rows_in_batches(make_user):
    owner = make_user()
    payments = [schedule(owner, f"NL91ABNA04171643{i:02d}") for i in range(5)]
    Payment.objects.update(payee_account_hmac="")  # as before the migration

    migration.backfill_payee_account_hmac(apps, SimpleNamespace(connection=connection), batch_size=2)

    for payment in payments:
        payment.refresh_from_db()
        assert payment.payee_account_hmac == payee_account_hmac(payment.payee_account)
    # the migration's own copy of the algorithm is the app's
    assert migration.account_hmac(IBAN_GROUPED.lower()) == payee_account_hmac(IBAN)


def test_rehash_recomputes_after_a_key_change_and_check_says_when_it_is_needed(make_user, settings):
    payment = schedule(make_user(), IBAN)
    Payment.objects.filter(pk=payment.pk).update(payee_account_hmac="")

    with pytest.raises(SystemExit) as stale:
        call_command("rehash_payee_accounts", "--check", stdout=StringIO())
    assert stale.value.code == 1
    call_command("rehash_payee_accounts", "--missing-only", stdout=StringIO())
    call_command("rehash_payee_accounts", "--check", stdout=StringIO())  # exits 0

    # a new key: every value is stale until the command has run
    settings.FIELD_HMAC_KEY = "rotated-" + "k" * 40
    with pytest.raises(SystemExit):
        call_command("rehash_payee_accounts", "--check", stdout=StringIO())
    out = StringIO()
    call_command("rehash_payee_accounts", "--batch-size", "1", stdout=out)
    assert "Recomputed 1 of 1" in out.getvalue()
    payment.refresh_from_db()
    assert payment.payee_account_hmac == payee_account_hmac(IBAN)
