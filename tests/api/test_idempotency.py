"""Idempotency-Key on POST /api/v1/payments: replay, reuse, in flight, lost races, parallel duplicates."""

from __future__ import annotations

import json
import random
import re
import threading
import uuid
from collections import Counter
from contextlib import contextmanager
from datetime import timedelta
from io import StringIO
from typing import Any

import psycopg
import pytest
import requests
from django.core.management import call_command
from django.db import IntegrityError, connection

from accounts.services import token_issue
from common.crypto import idempotency_key_hmac
from payments.api import idempotency
from payments.api.idempotency import WorkResult, idempotent_execute, request_fingerprint
from payments.models import IdempotencyRecord, Payment, PaymentEvent
from payments.services import idempotency_purge_expired
from tests.factories import PaymentFactory

from .conftest import FIXED_NOW, PAYMENTS_URL, assert_problem, create, payment_body

pytestmark = pytest.mark.django_db


def fingerprint_of(body):
    return request_fingerprint("POST", PAYMENTS_URL, body)


def test_it_requires_an_idempotency_key(api):
    # when a create comes without the header (or with an empty one)
    missing = create(api, key=None)
    empty = create(api, key="")

    # then 400 idempotency_key_required, and nothing is created
    assert_problem(missing, 400, "idempotency_key_required")
    assert_problem(empty, 400, "idempotency_key_required")
    assert not Payment.objects.exists()


@pytest.mark.parametrize("key", ["k" * 256, "clé-é", "tab\there"])
def test_it_rejects_a_key_that_is_not_1_to_255_printable_ascii_characters(api, key):
    assert_problem(create(api, key=key), 400, "idempotency_key_invalid")
    assert not IdempotencyRecord.objects.exists()


@pytest.mark.parametrize("key", ["4111 1111 1111 1111", "order-4111111111111111", "5500-0000-0000-0004"])
def test_a_key_holding_a_card_number_is_accepted_and_never_stored(api, owner, key):
    # given a key that holds a card number
    response = create(api, key=key)

    # then it is an ordinary key: the payment is created, and a retry replays it
    assert response.status_code == 201
    assert create(api, key=key)["Idempotent-Replayed"] == "true"
    assert Payment.objects.count() == 1
    # and the table holds only the key's HMAC, no digit of the key in clear
    (stored,) = IdempotencyRecord.objects.values_list("key_hmac", flat=True)
    assert stored == idempotency_key_hmac(key)
    with connection.cursor() as cursor:
        cursor.execute("SELECT key_hmac FROM payments_idempotencyrecord")
        (raw,) = cursor.fetchone()
    assert raw == stored
    assert key not in raw


def luhn_valid(digits):
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def test_uuid4_hex_keys_whose_digits_pass_luhn_are_accepted(api):
    # given uuid4().hex keys holding a 13-19 digit run that passes Luhn (about 0.3 % of them;
    # these were refused with 400 idempotency_key_invalid before keys were hashed)
    rng = random.Random(11)
    keys: list[str] = []
    while len(keys) < 3:
        key = uuid.UUID(int=rng.getrandbits(128), version=4).hex
        runs = re.findall(r"[0-9]{13,}", key)
        if any(luhn_valid(run[i : i + n]) for run in runs for n in range(13, 20) for i in range(len(run) - n + 1)):
            keys.append(key)
    # then each creates its payment
    for key in keys:
        assert create(api, key=key).status_code == 201, key


def test_a_uuid_key_is_never_mistaken_for_a_card_number(api):
    assert create(api, key="5f0c8a3e-1234-4111-8111-111111111111").status_code == 201


def test_a_key_of_255_characters_is_fine(api):
    assert create(api, key="k" * 255).status_code == 201


def test_the_same_key_and_body_replays_the_original_response_and_creates_nothing(api):
    # given a created payment
    first = create(api, key="order-1")

    # when the very same request is sent again
    second = create(api, key="order-1")

    # then the original status, body and Location come back, marked as a replay
    assert second.status_code == 201
    assert second.content == first.content
    assert second["Location"] == first["Location"]
    assert second["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    # and nothing new exists
    assert Payment.objects.count() == 1
    assert PaymentEvent.objects.count() == 1
    assert IdempotencyRecord.objects.get().response_status == 201


def test_a_replay_ignores_json_key_order_and_whitespace(api):
    body = payment_body()
    first = create(api, body, key="order-2")
    reordered = json.dumps(dict(reversed(list(body.items()))), indent=2).encode()
    second = api.post(PAYMENTS_URL, reordered, content_type="application/json", HTTP_IDEMPOTENCY_KEY="order-2")
    assert second.status_code == 201
    assert second["Idempotent-Replayed"] == "true"
    assert second.content == first.content


def test_a_replay_returns_the_original_even_after_the_payment_changed_or_fell_due(api, db_clock):
    # given a created payment, since canceled, whose scheduled time has now passed
    body = payment_body(scheduled_for="2026-06-01T13:00:00Z")  # an hour after the frozen "now"
    first = create(api, body, key="order-3")
    api.post(f"{PAYMENTS_URL}/{first.json()['id']}/cancel")
    db_clock.advance(timedelta(hours=2))

    # when the create is retried
    again = create(api, body, key="order-3")

    # then it is the original response (not a new validation, not the current state)
    assert again.status_code == 201
    assert again.content == first.content
    assert again.json()["status"] == "scheduled"


def test_the_same_key_with_a_different_body_is_refused(api):
    # given a created payment
    create(api, key="order-4")

    # when the key is used for a different payment
    response = create(api, payment_body(amount="999.00"), key="order-4")

    # then 422 idempotency_key_reused, and no second payment
    assert_problem(response, 422, "idempotency_key_reused")
    assert Payment.objects.count() == 1


def test_keys_are_scoped_to_the_user(api, outsider_api):
    assert create(api, key="shared").status_code == 201
    assert create(outsider_api, key="shared").status_code == 201
    assert Payment.objects.count() == 2


def other_connection() -> psycopg.Connection:
    """A second session on the test database, as a parallel request would have (autocommit)."""
    settings_dict = connection.settings_dict
    return psycopg.connect(
        dbname=settings_dict["NAME"],
        host=settings_dict["HOST"] or "127.0.0.1",
        port=settings_dict["PORT"] or 5432,
        user=settings_dict["USER"],
        autocommit=True,
    )


@contextmanager
def key_in_flight(user, key: str):
    """Another request holding ``key``: its advisory lock, taken on a connection of its own."""
    with other_connection() as other:
        other.execute("SELECT pg_advisory_lock(%s, %s)", idempotency.idempotency_lock_id(user.pk, key))
        yield
        other.execute("SELECT pg_advisory_unlock(%s, %s)", idempotency.idempotency_lock_id(user.pk, key))


def test_a_key_whose_first_request_is_still_in_flight_is_409(api, owner):
    # given a request with this key is being processed
    body = payment_body()
    with key_in_flight(owner, "busy"):
        # when the same request arrives, or another body with the key
        response = create(api, body, key="busy")
        other_body = create(api, payment_body(amount="1.00"), key="busy")

        # then 409 idempotency_key_in_use with a Retry-After, and nothing is created or stored
        assert_problem(response, 409, "idempotency_key_in_use")
        assert response["Retry-After"] == "1"
        assert_problem(other_body, 409, "idempotency_key_in_use")
        assert not Payment.objects.exists()
        assert not IdempotencyRecord.objects.exists()
        # and other keys of the user are not held up
        assert create(api, body, key="free").status_code == 201

    # once the first request is over, the key works
    assert create(api, body, key="busy").status_code == 201


def test_a_request_that_dies_midway_leaves_nothing_behind(owner):
    # given work that wrote a payment and then failed (a crash, a lost connection)
    def work(now):
        make_bare_payment(owner)
        raise RuntimeError("worker process died")

    # when it runs under a key
    with pytest.raises(RuntimeError):
        idempotent_execute(user=owner, key="dies", fingerprint="d" * 64, work=work)

    # then neither the payment nor the key is kept: a retry runs from scratch
    assert not Payment.objects.exists()
    assert not IdempotencyRecord.objects.exists()
    retried = idempotent_execute(user=owner, key="dies", fingerprint="d" * 64, work=lambda now: WorkResult(201, {}))
    assert retried.replayed is False


def make_bare_payment(owner) -> Payment:
    payment: Payment = PaymentFactory.create(
        owner=owner,
        amount_minor=1,
        payee_name="x",
        payee_account="1",
        payee_account_last4="1",
        scheduled_for=FIXED_NOW + timedelta(days=1),
        scheduled_local="",
    )
    return payment


@pytest.mark.django_db(transaction=True)
def test_a_request_that_loses_the_key_to_a_parallel_one_rolls_back_and_replays_it(owner):
    # given a parallel request commits the same key while ours works (it slipped between our
    # key lock and our look-up: the unique constraint is the last guard)
    stored = {"content": json.dumps({"id": "theirs"}), "headers": {"Location": "/theirs"}}

    def work(now):
        make_bare_payment(owner)
        with other_connection() as other:
            other.execute(
                "INSERT INTO payments_idempotencyrecord"
                " (user_id, key_hmac, fingerprint, response_status, response_body, created_at, expires_at)"
                " VALUES (%s, %s, %s, 201, %s, now(), now() + interval '1 day')",
                [
                    owner.pk,
                    idempotency_key_hmac("race"),
                    "r" * 64,
                    IdempotencyRecord._meta.get_field("response_body").get_db_prep_save(stored, connection),
                ],
            )
        return WorkResult(201, {"id": "ours"})

    # when ours tries to store its response
    result = idempotent_execute(user=owner, key="race", fingerprint="r" * 64, work=work)

    # then our work is rolled back and the parallel request's response answers, as a replay
    assert not Payment.objects.exists()
    assert result.replayed is True
    assert json.loads(result.content) == {"id": "theirs"}
    assert dict(result.headers) == {"Location": "/theirs"}
    assert IdempotencyRecord.objects.count() == 1


def test_a_failed_validation_does_not_consume_the_key(api):
    # given a request refused by validation
    assert_problem(create(api, payment_body(amount="0"), key="order-5"), 422, "invalid_amount")
    assert not IdempotencyRecord.objects.exists()

    # when the client corrects the body and retries with the same key
    response = create(api, key="order-5")

    # then it is processed normally
    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response


def test_an_unexpected_error_releases_the_key_and_answers_500_problem(api, monkeypatch, settings):
    # given the service fails unexpectedly
    def boom(**kwargs):
        raise RuntimeError("database on fire")

    monkeypatch.setattr("payments.services.payment_create", boom)
    api.raise_request_exception = False

    # when a payment is created
    response = create(api, key="order-6")

    # then 500 problem+json, and the key is free for a retry
    assert_problem(response, 500, "internal_error")
    assert not IdempotencyRecord.objects.exists()
    monkeypatch.undo()
    assert create(api, key="order-6").status_code == 201


def test_an_expired_key_may_be_used_again(api, db_clock, settings):
    # given a key used longer ago than the retention
    create(api, key="order-7")
    db_clock.advance(settings.IDEMPOTENCY_KEY_RETENTION + timedelta(seconds=1))

    # when it is used again
    response = create(api, key="order-7")

    # then it is a new request
    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response
    assert Payment.objects.count() == 2


def test_keys_are_kept_at_least_24_hours(api, db_clock):
    create(api, key="order-8")
    db_clock.advance(timedelta(hours=23, minutes=59))
    assert create(api, key="order-8")["Idempotent-Replayed"] == "true"


def test_purge_deletes_only_expired_records(owner, settings):
    # given one expired and one live record
    for key, expires in (("old", FIXED_NOW - timedelta(seconds=1)), ("live", FIXED_NOW + timedelta(hours=1))):
        IdempotencyRecord.objects.create(
            user=owner,
            key_hmac=idempotency_key_hmac(key),
            fingerprint="f" * 64,
            expires_at=expires,
        )

    # when the purge runs
    deleted = idempotency_purge_expired(now=FIXED_NOW, batch_size=1)

    # then only the expired one is gone
    assert deleted == 1
    assert list(IdempotencyRecord.objects.values_list("key_hmac", flat=True)) == [idempotency_key_hmac("live")]


def test_purge_command_reports_what_it_deleted(owner):
    IdempotencyRecord.objects.create(
        user=owner,
        key_hmac=idempotency_key_hmac("ancient"),
        fingerprint="f" * 64,
        expires_at=FIXED_NOW - timedelta(days=2),
    )
    out = StringIO()
    call_command("purge_idempotency_keys", stdout=out)
    assert "Purged 1 " in out.getvalue()
    assert not IdempotencyRecord.objects.exists()


def test_the_fingerprint_covers_method_path_and_canonical_body():
    body = {"b": 1, "a": [1, 2]}
    assert request_fingerprint("POST", "/x", body) == request_fingerprint("post", "/x", {"a": [1, 2], "b": 1})
    assert request_fingerprint("POST", "/x", body) != request_fingerprint("POST", "/y", body)
    assert request_fingerprint("POST", "/x", body) != request_fingerprint("PATCH", "/x", body)
    assert len(request_fingerprint("POST", "/x", body)) == 64


@pytest.mark.django_db(transaction=True)
def test_twenty_parallel_requests_with_one_key_create_exactly_one_payment(live_server, owner):
    # given one user, one key and one body, sent at once from 20 threads to a real server
    token = token_issue(user=owner, actor="test").raw
    body = payment_body()
    barrier = threading.Barrier(20)
    answers: list[tuple[int, dict[str, str], dict[str, Any]]] = []
    lock = threading.Lock()

    def send() -> None:
        barrier.wait()
        response = requests.post(
            f"{live_server.url}{PAYMENTS_URL}",
            json=body,
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "parallel-1"},
            timeout=30,
        )
        with lock:
            answers.append((response.status_code, dict(response.headers), response.json()))

    threads = [threading.Thread(target=send) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # then exactly one payment exists
    assert Payment.objects.filter(owner=owner).count() == 1
    payment_id = str(Payment.objects.get(owner=owner).pk)
    # and every answer is the creation, a replay of it, or "in use"
    statuses = Counter(status for status, _, _ in answers)
    print("parallel answers:", statuses, sum(h.get("Idempotent-Replayed") == "true" for _, h, _ in answers))
    assert set(statuses) <= {201, 409}, statuses
    created = [(headers, payload) for status, headers, payload in answers if status == 201]
    fresh = [headers for headers, _ in created if headers.get("Idempotent-Replayed") != "true"]
    assert len(fresh) == 1
    assert all(payload["id"] == payment_id for _, payload in created)
    assert all(payload["code"] == "idempotency_key_in_use" for status, _, payload in answers if status == 409)
    assert len(answers) == 20
    # and a retry now replays it
    again = requests.post(
        f"{live_server.url}{PAYMENTS_URL}",
        json=body,
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "parallel-1"},
        timeout=30,
    )
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == payment_id


@pytest.mark.django_db(transaction=True)
def test_parallel_requests_with_different_keys_each_create_one_payment(owner):
    # given 10 threads, each with its own key and its own database connection
    from django.db import connections
    from rest_framework.test import APIClient

    token = token_issue(user=owner, actor="test").raw
    barrier = threading.Barrier(10)
    codes: list[int] = []

    def send(index: int) -> None:
        try:
            client = APIClient()
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
            barrier.wait()
            response = client.post(PAYMENTS_URL, payment_body(), format="json", HTTP_IDEMPOTENCY_KEY=f"k-{index}")
            codes.append(response.status_code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # then ten payments, one per key
    assert codes == [201] * 10
    assert Payment.objects.filter(owner=owner).count() == 10
    assert connection.vendor == "postgresql"


def test_the_helper_is_reusable_for_other_work(owner):
    # given a generic piece of work (e.g. a future PATCH) run under a key
    calls = []

    def work(now):
        calls.append(1)
        return WorkResult(200, {"ok": True}, {"X-Thing": "1"})

    # when it runs twice under one key
    first = idempotent_execute(user=owner, key="generic", fingerprint="a" * 64, work=work)
    second = idempotent_execute(user=owner, key="generic", fingerprint="a" * 64, work=work)

    # then the work ran once and the second answer is the stored one
    assert calls == [1]
    assert (first.status, first.content, first.replayed) == (200, b'{"ok":true}', False)
    assert (second.status, second.content, dict(second.headers), second.replayed) == (
        200,
        b'{"ok":true}',
        {"X-Thing": "1"},
        True,
    )
    assert idempotency.REPLAYED_HEADER in second.as_http_response()


@pytest.mark.django_db(transaction=True)
def test_an_integrity_error_other_than_the_key_constraint_is_an_error_not_a_taken_key(owner, caplog):
    # given work whose record insert breaks another constraint (a negative response_status
    # fails the column's CHECK): not the idempotency key's
    runs = []

    def work(now):
        runs.append(now)
        return WorkResult(-1, {"id": "x"})

    # when it runs
    with pytest.raises(IntegrityError) as raised:
        idempotent_execute(user=owner, key="fk", fingerprint="f" * 64, work=work)

    # then the work ran once (never retried as if a parallel request held the key), the
    # error reaches the caller (500) and nothing is stored
    assert len(runs) == 1
    assert "idempotency_user_key_unique" not in str(raised.value)
    assert not IdempotencyRecord.objects.exists()
    assert any("idempotency" in record.getMessage() and record.levelname == "ERROR" for record in caplog.records)


@pytest.mark.django_db(transaction=True)
def test_a_foreign_key_error_in_the_work_answers_500_once(owner):
    # given work that stores a payment reference to a row that does not exist (checked at insert)
    runs = []

    def work(now):
        runs.append(now)
        return WorkResult(201, {"id": "ghost"}, payment=Payment(id=uuid.uuid4()))

    with pytest.raises(IntegrityError):
        idempotent_execute(user=owner, key="ghost", fingerprint="g" * 64, work=work)

    assert len(runs) == 1
    assert not IdempotencyRecord.objects.exists()
