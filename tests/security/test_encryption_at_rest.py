"""Personal data is encrypted at rest: the raw tables hold no plaintext, the ORM sees plaintext."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import FieldError
from django.core.management import call_command
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import User
from common import crypto
from common.crypto import idempotency_key_hmac
from payments.fields import SensitiveJSONField, SensitiveTextField
from payments.models import IdempotencyRecord, Payment

from .conftest import DESCRIPTION, IBAN, METADATA, PAYEE_NAME, PAYMENT_METHOD, PLAINTEXT_FRAGMENTS

pytestmark = pytest.mark.django_db

PAYMENT_ROW_SQL = (
    "SELECT payee_name, payee_account, description, metadata::text, payment_method FROM payments_payment WHERE id = %s"
)


def raw_payment_row(payment_id: Any) -> tuple[str, ...]:
    with connection.cursor() as cursor:
        cursor.execute(PAYMENT_ROW_SQL, [payment_id])
        row = cursor.fetchone()
    assert row is not None
    return tuple(row)


def raw_response_body(record_id: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT response_body::text FROM payments_idempotencyrecord WHERE id = %s", [record_id])
        row = cursor.fetchone()
    assert row is not None
    return str(row[0])


def assert_no_plaintext(raw: str) -> None:
    for fragment in PLAINTEXT_FRAGMENTS:
        assert fragment not in raw, f"{fragment!r} is stored in clear"


def test_it_stores_no_personal_value_of_a_payment_in_clear(make_payment: Callable[..., Payment]) -> None:
    # given a payment created through the ORM
    payment = make_payment()

    # when the table is read with SQL
    raw = raw_payment_row(payment.pk)

    # then every sensitive column holds a versioned token and no plaintext
    assert_no_plaintext(" ".join(raw))
    payee_name, payee_account, description, metadata, payment_method = raw
    for token in (payee_name, payee_account, description, payment_method):
        assert token.startswith(f"enc1:{crypto.newest_key_id()}:")
    # jsonb keeps a JSON string holding the encrypted document
    assert json.loads(metadata).startswith("enc1:")


def test_it_reads_back_the_plaintext_through_the_orm(make_payment: Callable[..., Payment]) -> None:
    payment = make_payment()

    stored = Payment.objects.get(pk=payment.pk)

    assert stored.payee_name == PAYEE_NAME
    assert stored.payee_account == IBAN
    assert stored.description == DESCRIPTION
    assert stored.metadata == METADATA
    assert stored.payment_method == PAYMENT_METHOD


def test_equal_values_encrypt_differently(make_payment: Callable[..., Payment]) -> None:
    first, second = make_payment(), make_payment()

    assert raw_payment_row(first.pk)[0] != raw_payment_row(second.pk)[0]


def test_it_stores_no_idempotent_response_in_clear(owner: User) -> None:
    # given a stored response, written with an UPDATE (the idempotency layer INSERTs; both must encrypt)
    now = timezone.now()
    record = IdempotencyRecord.objects.create(
        user=owner, key_hmac=idempotency_key_hmac("k1"), fingerprint="0" * 64, expires_at=now + timedelta(days=1)
    )
    body = {"content": json.dumps({"payee": {"name": PAYEE_NAME}, "metadata": METADATA}), "headers": {}}
    IdempotencyRecord.objects.filter(pk=record.pk).update(response_body=body, response_status=201)

    # then the raw column is an encrypted JSON string, and the ORM reads the document back
    raw = raw_response_body(record.pk)
    assert_no_plaintext(raw)
    assert json.loads(raw).startswith("enc1:")
    record.refresh_from_db()
    assert record.response_body == body


def test_a_null_response_body_stays_sql_null(owner: User) -> None:
    now = timezone.now()
    record = IdempotencyRecord.objects.create(
        user=owner, key_hmac=idempotency_key_hmac("k2"), fingerprint="0" * 64, expires_at=now + timedelta(days=1)
    )

    assert IdempotencyRecord.objects.filter(pk=record.pk, response_body__isnull=True).exists()


def test_a_payment_created_through_the_api_is_encrypted_with_its_idempotent_response(
    api: APIClient, owner: User
) -> None:
    # given a payment scheduled through the public API
    response = api.post(
        "/api/v1/payments",
        {
            "amount": "125.50",
            "currency": "EUR",
            "payment_method": PAYMENT_METHOD,
            "payee": {"name": PAYEE_NAME, "account": IBAN},
            "description": DESCRIPTION,
            "scheduled_for": (timezone.now() + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "metadata": METADATA,
        },
        format="json",
        HTTP_IDEMPOTENCY_KEY="sec-api-1",
    )
    assert response.status_code == 201, response.content

    # then neither the payment row nor the stored idempotent response holds plaintext
    assert_no_plaintext(" ".join(raw_payment_row(response.json()["id"])))
    record = IdempotencyRecord.objects.get(user=owner, key_hmac=idempotency_key_hmac("sec-api-1"))
    assert_no_plaintext(raw_response_body(record.pk))


def test_legacy_plaintext_still_reads(make_payment: Callable[..., Payment]) -> None:
    # given a row written before encryption was switched on
    payment = make_payment()
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE payments_payment SET payee_name = %s, metadata = %s::jsonb WHERE id = %s",
            ["Legacy Name", json.dumps({"legacy": "yes"}), payment.pk],
        )

    stored = Payment.objects.get(pk=payment.pk)

    assert stored.payee_name == "Legacy Name"
    assert stored.metadata == {"legacy": "yes"}


def test_a_tampered_value_is_refused(make_payment: Callable[..., Payment]) -> None:
    payment = make_payment()
    token = raw_payment_row(payment.pk)[0]
    tampered = token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")
    with connection.cursor() as cursor:
        cursor.execute("UPDATE payments_payment SET payee_name = %s WHERE id = %s", [tampered, payment.pk])

    with pytest.raises(crypto.FieldDecryptionError, match="failed authentication"):
        Payment.objects.get(pk=payment.pk)


def test_a_value_under_an_unknown_key_names_the_missing_key(make_payment: Callable[..., Payment], settings) -> None:
    payment = make_payment()
    old_key_id = crypto.newest_key_id()

    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]

    with pytest.raises(crypto.FieldDecryptionError, match=old_key_id):
        Payment.objects.get(pk=payment.pk)


def test_lookups_on_encrypted_content_fail_loudly_instead_of_matching_nothing(
    make_payment: Callable[..., Payment],
) -> None:
    make_payment()

    # (keyword dicts: django-stubs' mypy plugin would resolve these lookups, and fail, at check time)
    for lookup in ({"payee_name": PAYEE_NAME}, {"payee_account__icontains": "3000"}, {"metadata__tenant": "x"}):
        with pytest.raises(FieldError, match="random IV"):
            Payment.objects.filter(**lookup).count()
    # isnull does not depend on the content
    assert Payment.objects.filter(payee_name__isnull=False).count() == 1


def test_the_fields_need_no_migration_and_keep_their_paths() -> None:
    _name, path, _, _ = SensitiveTextField().deconstruct()
    assert path == "payments.fields.SensitiveTextField"
    assert SensitiveJSONField().deconstruct()[1] == "payments.fields.SensitiveJSONField"
    assert SensitiveTextField().db_type(connection) == "text"
    assert SensitiveJSONField().db_type(connection) == "jsonb"
    call_command("makemigrations", "payments", "--check", "--dry-run", stdout=StringIO())
