"""The OpenAPI document describes the whole end-user API, and generates without warnings."""

from __future__ import annotations

import json
from io import StringIO

import pytest
import yaml
from django.core.management import call_command
from django.test import Client

from payments.api.serializers import (
    CREATE_FIELDS,
    PaymentCreateSerializer,
    PaymentEventSerializer,
    PaymentSerializer,
    event_representation,
)
from payments.models import PaymentEvent

from .conftest import PAYMENT_KEYS


def test_the_schema_generates_and_validates_without_warnings(tmp_path):
    # `spectacular --validate --fail-on-warn` exits non-zero on any warning or invalid document
    target = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target), stdout=StringIO())
    assert target.stat().st_size > 0


@pytest.fixture(scope="module")
def schema():
    response = Client().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi")
    assert response.status_code == 200, response.content
    return yaml.safe_load(response.content)


def test_every_endpoint_is_documented(schema):
    operations = {
        (path, method): operation["operationId"]
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    }
    assert operations == {
        ("/api/v1/payments", "get"): "payments_list",
        ("/api/v1/payments", "post"): "payments_create",
        ("/api/v1/payments/{payment_id}", "get"): "payments_retrieve",
        ("/api/v1/payments/{payment_id}/cancel", "post"): "payments_cancel",
        ("/api/v1/payments/{payment_id}/events", "get"): "payments_events",
    }


def test_create_documents_the_body_the_key_and_the_errors(schema):
    create = schema["paths"]["/api/v1/payments"]["post"]
    header = next(p for p in create["parameters"] if p["name"] == "Idempotency-Key")
    assert (header["in"], header["required"]) == ("header", True)
    body_ref = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = schema["components"]["schemas"][body_ref.rsplit("/", 1)[1]]
    assert set(body["properties"]) == set(CREATE_FIELDS)
    assert {"Location", "Idempotent-Replayed"} <= set(create["responses"]["201"]["headers"])
    for status in ("400", "401", "409", "415", "422", "429"):
        assert "application/problem+json" in create["responses"][status]["content"], status
    bearer = schema["components"]["securitySchemes"]["bearerAuth"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")
    assert create["security"] == [{"bearerAuth": []}]


def test_the_payment_object_is_documented_with_string_amounts(schema):
    payment = schema["components"]["schemas"]["Payment"]
    assert set(payment["properties"]) == PAYMENT_KEYS
    assert payment["properties"]["amount"]["type"] == "string"
    assert set(PaymentSerializer().fields) == PAYMENT_KEYS


def test_the_docs_match_what_the_code_does():
    # the request serializer documents exactly the fields the validator accepts
    assert tuple(PaymentCreateSerializer().fields) == CREATE_FIELDS
    # the event serializer documents exactly the keys an event has
    event = PaymentEvent(from_status="", to_status="scheduled", reason="created", attempt=0)
    from django.utils import timezone

    event.at = timezone.now()
    assert list(PaymentEventSerializer().fields) == list(event_representation(event))


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/schema/", "/api/docs/"])
def test_errors_of_the_schema_and_docs_pages_are_json_problems_too(path):
    # these views render YAML and HTML; their errors must still be problem+json
    response = Client().get(path, HTTP_AUTHORIZATION="Bearer spt_wrong")
    assert response.status_code == 401
    assert response["Content-Type"].startswith("application/problem+json")
    assert json.loads(response.content)["code"] == "not_authenticated"


def test_the_browsable_docs_page_loads():
    response = Client().get("/api/docs/")
    assert response.status_code == 200
    assert b"swagger" in response.content.lower()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"status": "succeeded", "gateway_reference": "ch_1", "attempts": 1, "executed": True},
        {"status": "failed", "failure_code": "card_declined", "failure_message": "Declined", "attempts": 2},
        {"status": "failed", "failure_code": "", "failure_message": ""},
        {"status": "canceled", "canceled": True},
        {"status": "reconciling", "attempts": 1, "time_zone": "Europe/Kyiv"},
        {"time_zone": "Mars/Olympus_Mons", "scheduled_local": "2027-01-01T09:00:00"},
    ],
)
def test_the_payment_representation_is_what_the_documented_serializer_renders(owner, changes):
    # The API builds the payment object without DRF's serializer (it is faster); the schema
    # documents PaymentSerializer: both must render the same JSON, byte for byte.
    from datetime import timedelta

    from django.utils import timezone
    from rest_framework.renderers import JSONRenderer

    from payments.api.serializers import payment_representation
    from payments.models import Payment

    now = timezone.now()
    executed, canceled = changes.pop("executed", False), changes.pop("canceled", False)
    fields = {
        "owner": owner,
        "amount_minor": 12550,
        "currency": "EUR",
        "payment_method": "pm_card_visa",
        "payee_name": "ACME Utilities",
        "payee_account": "DE21370400440532014321",
        "payee_account_last4": "4321",
        "description": "March rent",
        "metadata": {"invoice": "2027-03", "n": "1"},
        "scheduled_for": now + timedelta(days=3),
        "time_zone": "America/New_York",
        "scheduled_local": "",
        "created_at": now,
        "updated_at": now,
        "executed_at": now if executed else None,
        "canceled_at": now if canceled else None,
    }
    payment = Payment.objects.create(**(fields | changes))
    payment.refresh_from_db()

    rendered = JSONRenderer().render(payment_representation(payment))
    assert rendered == JSONRenderer().render(PaymentSerializer(payment).data)
