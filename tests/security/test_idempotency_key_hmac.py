"""Idempotency keys are kept as a keyed hash: converted by a migration, found across a key change."""

from __future__ import annotations

import importlib
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import User
from common.crypto import idempotency_key_hmac
from payments.models import IdempotencyRecord, Payment

MIGRATION: Any = importlib.import_module("payments.migrations.0006_idempotency_key_hmac")
BEFORE = [("payments", "0005_idempotency_single_transaction")]
AFTER = [("payments", "0006_idempotency_key_hmac")]


def payment_body() -> dict[str, Any]:
    return {
        "amount": "10.00",
        "currency": "EUR",
        "payment_method": "pm_card_visa",
        "payee": {"name": "ACME", "account": "DE89370400440532013000"},
        "scheduled_for": (timezone.now() + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def test_the_migration_hashes_as_the_application_does(settings: Any) -> None:
    settings.FIELD_HMAC_KEY = "m" * 40
    for key in ("order-1", "4111 1111 1111 1111", "k" * 255, "é"):
        assert MIGRATION.key_hmac(key) == idempotency_key_hmac(key)


@pytest.mark.django_db(transaction=True)
def test_the_migration_replaces_keys_in_clear_and_replays_still_work(make_user: Any) -> None:
    # given the schema before this change, with records holding keys in clear
    owner = make_user("legacy")
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    try:
        now = timezone.now()
        with connection.cursor() as cursor:
            for key in ("legacy-1", "4111111111111111", "legacy-3"):
                cursor.execute(
                    "INSERT INTO payments_idempotencyrecord (user_id, key, fingerprint, created_at, expires_at, "
                    "response_status, response_body) VALUES (%s, %s, %s, %s, %s, NULL, NULL)",
                    [owner.pk, key, "f" * 64, now, now + timedelta(hours=1)],
                )
        # when the migration runs (in batches smaller than the table)
        batch_size = MIGRATION.BATCH_SIZE
        MIGRATION.BATCH_SIZE = 2
        try:
            executor = MigrationExecutor(connection)
            executor.loader.build_graph()
            executor.migrate(AFTER)
        finally:
            MIGRATION.BATCH_SIZE = batch_size
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())

    # then no key is left in clear: each row holds the key's HMAC
    with connection.cursor() as cursor:
        cursor.execute("SELECT key_hmac FROM payments_idempotencyrecord ORDER BY id")
        stored = [row[0] for row in cursor.fetchall()]
    assert stored == [idempotency_key_hmac(k) for k in ("legacy-1", "4111111111111111", "legacy-3")]
    IdempotencyRecord.objects.all().delete()


@pytest.mark.django_db
def test_a_record_hashed_under_a_previous_hmac_key_is_still_replayed(
    settings: Any, owner: User, api: APIClient
) -> None:
    # given a payment created under the old FIELD_HMAC_KEY
    settings.FIELD_HMAC_KEY = "old-" + "o" * 40
    body = payment_body()
    first = api.post("/api/v1/payments", body, format="json", HTTP_IDEMPOTENCY_KEY="rent-2027-03")
    assert first.status_code == 201
    # when the key changes and the old one is kept as a previous key
    settings.FIELD_HMAC_PREVIOUS_KEYS = [settings.FIELD_HMAC_KEY]
    settings.FIELD_HMAC_KEY = "new-" + "n" * 40
    retry = api.post("/api/v1/payments", body, format="json", HTTP_IDEMPOTENCY_KEY="rent-2027-03")
    # then the client's retry replays the original: no second payment
    assert retry.status_code == 201
    assert retry["Idempotent-Replayed"] == "true"
    assert retry.json()["id"] == first.json()["id"]
    assert Payment.objects.count() == 1
