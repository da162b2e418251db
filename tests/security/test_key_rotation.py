"""``manage.py rotate_encryption_keys``: every value ends under the newest key, resumably."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, connections, transaction
from django.utils import timezone

from accounts.models import User
from common import crypto
from common.crypto import idempotency_key_hmac
from payments.models import IdempotencyRecord, Payment

from .conftest import IBAN, METADATA, PAYEE_NAME, PAYMENT_METHOD, PLAINTEXT_FRAGMENTS

KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()


def raw_tokens() -> list[str]:
    """Every stored sensitive value, as stored (JSON strings unwrapped)."""
    tokens: list[str] = []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT payee_name, payee_account, description, metadata::text, payment_method FROM payments_payment"
        )
        for name, account, description, metadata, method in cursor.fetchall():
            tokens += [name, account, description, json.loads(metadata) if metadata.startswith('"') else metadata]
            tokens.append(method)
        cursor.execute("SELECT response_body::text FROM payments_idempotencyrecord WHERE response_body IS NOT NULL")
        for (body,) in cursor.fetchall():
            tokens.append(json.loads(body) if body.startswith('"') else body)
    return tokens


def raw_payee_name(payment_id: Any) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT payee_name FROM payments_payment WHERE id = %s", [payment_id])
        return str(cursor.fetchone()[0])


def rotate(*args: str) -> str:
    out = StringIO()
    call_command("rotate_encryption_keys", *args, stdout=out)
    return out.getvalue()


def make_idempotency_record(owner: User, key: str) -> IdempotencyRecord:
    now = timezone.now()
    return IdempotencyRecord.objects.create(
        user=owner,
        key_hmac=idempotency_key_hmac(key),
        fingerprint="0" * 64,
        expires_at=now + timedelta(days=1),
        response_status=201,
        response_body={"content": json.dumps({"payee": PAYEE_NAME}), "headers": {}},
    )


@pytest.mark.django_db
def test_it_moves_every_value_from_key_a_and_plaintext_to_key_b(
    make_payment: Callable[..., Payment], owner: User, settings
) -> None:
    # given rows written under key A, one legacy plaintext row, and an idempotent response
    settings.FIELD_ENCRYPTION_KEYS = [KEY_A]
    payments = [make_payment(owner=owner) for _ in range(5)]
    make_idempotency_record(owner, "rot-1")
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE payments_payment SET payee_name = %s, metadata = %s::jsonb WHERE id = %s",
            [PAYEE_NAME, json.dumps(METADATA), payments[0].pk],
        )
    updated_at = {p.pk: p.updated_at for p in Payment.objects.all()}

    # when key B becomes the newest, A is still configured
    settings.FIELD_ENCRYPTION_KEYS = [KEY_B, KEY_A]

    # then --check reports the stale rows and fails
    with pytest.raises(CommandError) as failure:
        rotate("--check")
    assert failure.value.returncode == 1
    assert "6 row(s)" in str(failure.value)

    # when the rotation runs, in batches smaller than the table
    output = rotate("--batch-size", "2")
    assert "payments.Payment: 5 row(s), 5 not under the newest key" in output
    assert f"{crypto.key_id(KEY_A)}" in output

    # then every value is under B: no plaintext, no token under A
    tokens = raw_tokens()
    assert tokens
    assert all(token.startswith(f"enc1:{crypto.key_id(KEY_B)}:") for token in tokens)
    for fragment in PLAINTEXT_FRAGMENTS:
        assert not any(fragment in token for token in tokens)
    # and --check passes, the columns nobody rotated are untouched
    assert "Every sensitive value is under the newest key." in rotate("--check")
    assert {p.pk: p.updated_at for p in Payment.objects.all()} == updated_at

    # and with A retired the data still reads
    settings.FIELD_ENCRYPTION_KEYS = [KEY_B]
    for payment in Payment.objects.all():
        assert payment.payee_name == PAYEE_NAME
        assert payment.payee_account == IBAN
        assert payment.payment_method == PAYMENT_METHOD
        assert payment.metadata == METADATA
    assert IdempotencyRecord.objects.get(key_hmac=idempotency_key_hmac("rot-1")).response_body == {
        "content": json.dumps({"payee": PAYEE_NAME}),
        "headers": {},
    }


@pytest.mark.django_db
def test_a_second_run_rewrites_nothing(make_payment: Callable[..., Payment], settings) -> None:
    settings.FIELD_ENCRYPTION_KEYS = [KEY_A]
    make_payment()
    settings.FIELD_ENCRYPTION_KEYS = [KEY_B, KEY_A]
    rotate()
    before = raw_tokens()

    output = rotate()

    assert "rotated 0" in output
    assert raw_tokens() == before


@pytest.mark.django_db
def test_it_names_a_key_retired_too_early_and_touches_nothing(make_payment: Callable[..., Payment], settings) -> None:
    # given rows under A, and A removed before the rotation ran
    settings.FIELD_ENCRYPTION_KEYS = [KEY_A]
    make_payment()
    before = raw_tokens()
    settings.FIELD_ENCRYPTION_KEYS = [KEY_B]

    # then both --check and the rotation fail, naming the missing key, and nothing is rewritten
    for args in (("--check",), ()):
        with pytest.raises(CommandError, match=crypto.key_id(KEY_A)) as failure:
            rotate(*args)
        assert failure.value.returncode == 2
    assert raw_tokens() == before


@pytest.mark.django_db(transaction=True)
def test_it_skips_rows_held_by_other_work_and_says_to_run_again(make_payment: Callable[..., Payment], settings) -> None:
    # given two rows under A, one of them locked by a worker's transaction
    settings.FIELD_ENCRYPTION_KEYS = [KEY_A]
    busy, free = make_payment(), make_payment()
    settings.FIELD_ENCRYPTION_KEYS = [KEY_B, KEY_A]
    locked, release = threading.Event(), threading.Event()

    def worker() -> None:
        try:
            with transaction.atomic():
                Payment.objects.select_for_update().get(pk=busy.pk)
                locked.set()
                release.wait(timeout=30)
        finally:
            connections.close_all()

    thread = threading.Thread(target=worker)
    thread.start()
    assert locked.wait(timeout=30)
    try:
        # when the rotation runs, it neither waits for nor rewrites the busy row
        with pytest.raises(CommandError, match="run the command again"):
            rotate()
    finally:
        release.set()
        thread.join()

    # then the free row moved to B, the busy one is still under A
    assert crypto.key_id_of(raw_payee_name(free.pk)) == crypto.key_id(KEY_B)
    assert crypto.key_id_of(raw_payee_name(busy.pk)) == crypto.key_id(KEY_A)
    # and a second run finishes the job
    rotate()
    assert all(token.startswith(f"enc1:{crypto.key_id(KEY_B)}:") for token in raw_tokens())
