"""Server-controlled fields cannot be set by clients (OWASP API3 Broken Object Property Level Authorization).

Already covered in tests/api: POST with ``status``/``attempts`` is 422 ``unknown_field``; PUT on the
collection and DELETE on a payment are 405. Added here: PATCH/PUT on a payment, the other
server-controlled fields in POST, and a body sent to cancel.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from payments.models import Payment
from payments.statuses import Status

pytestmark = pytest.mark.django_db

PAYMENTS_URL = "/api/v1/payments"
SCHEDULED_FOR = (datetime.now(UTC) + timedelta(days=10)).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def body(**extra: Any) -> dict[str, Any]:
    return {
        "amount": "125.50",
        "currency": "EUR",
        "payment_method": "pm_card_visa",
        "payee": {"name": "ACME Utilities", "account": "DE89370400440532013000"},
        "scheduled_for": SCHEDULED_FOR,
        **extra,
    }


def problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/problem+json")
    parsed: dict[str, Any] = json.loads(response.content)
    assert parsed["code"] == code
    return parsed


@pytest.fixture
def payment(api: Any) -> dict[str, Any]:
    response = api.post(PAYMENTS_URL, body(), format="json", HTTP_IDEMPOTENCY_KEY="server-fields-1")
    assert response.status_code == 201, response.content
    created: dict[str, Any] = response.json()
    return created


@pytest.mark.parametrize("method", ["patch", "put"])
def test_a_payment_cannot_be_modified_with_patch_or_put(api, payment, method):
    changes = {"status": "succeeded", "amount": "1.00", "gateway_reference": "ch_forged", "attempts": 7}

    response = getattr(api, method)(f"{PAYMENTS_URL}/{payment['id']}", changes, format="json")

    problem(response, 405, "method_not_allowed")
    assert api.get(f"{PAYMENTS_URL}/{payment['id']}").json() == payment  # nothing changed


def test_server_controlled_fields_in_a_create_are_refused_by_name(api):
    forged = {
        "id": "0190f2c4-0000-7000-8000-000000000000",
        "status": "succeeded",
        "attempts": 3,
        "gateway_reference": "ch_forged",
        "executed_at": "2027-01-01T00:00:00Z",
        "failure": None,
        "amount_minor": 1,
        "owner": 1,
    }

    response = api.post(PAYMENTS_URL, body(**forged), format="json", HTTP_IDEMPOTENCY_KEY="server-fields-2")

    parsed = problem(response, 422, "unknown_field")
    assert {(e["field"], e["code"]) for e in parsed["errors"]} == {(name, "unknown_field") for name in forged}
    assert not Payment.objects.exists()


def test_a_body_sent_to_cancel_cannot_choose_the_outcome(api, payment):
    response = api.post(
        f"{PAYMENTS_URL}/{payment['id']}/cancel",
        {"status": "succeeded", "gateway_reference": "ch_forged"},
        format="json",
    )

    assert response.status_code == 200
    stored = Payment.objects.get(pk=payment["id"])
    assert (stored.status, stored.gateway_reference) == (Status.CANCELED, "")
