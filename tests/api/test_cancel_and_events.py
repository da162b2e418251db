"""POST /api/v1/payments/{id}/cancel and GET /api/v1/payments/{id}/events."""

from __future__ import annotations

import pytest

from payments import state_machine
from payments.models import Payment, PaymentEvent
from payments.statuses import Status
from tests.factories import advance

from .conftest import PAYMENTS_URL, assert_problem

pytestmark = pytest.mark.django_db


def cancel(api, payment_id, **headers):
    return api.post(f"{PAYMENTS_URL}/{payment_id}/cancel", **headers)


def test_it_cancels_a_scheduled_payment(api, make_payment, owner):
    # given a scheduled payment
    payment_id = make_payment()["id"]

    # when it is canceled
    response = cancel(api, payment_id)

    # then 200 with the payment, canceled, with canceled_at
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "canceled"
    assert body["canceled_at"].endswith("Z")
    assert api.get(f"{PAYMENTS_URL}/{payment_id}").json() == body
    event = PaymentEvent.objects.filter(payment_id=payment_id).latest("at", "id")
    assert (event.from_status, event.to_status, event.actor) == ("scheduled", "canceled", f"user:{owner.pk}")


def test_canceling_twice_answers_200_with_the_same_body(api, make_payment):
    payment_id = make_payment()["id"]
    first = cancel(api, payment_id)
    second = cancel(api, payment_id)
    assert second.status_code == 200
    assert second.json() == first.json()
    assert PaymentEvent.objects.filter(payment_id=payment_id, to_status=Status.CANCELED).count() == 1


def test_a_dispatched_payment_can_still_be_canceled(api, make_payment):
    # given the sweep queued the payment but no gateway submission has begun
    payment_id = make_payment()["id"]
    advance(payment_id, Status.DISPATCHED)

    # then cancel wins
    response = cancel(api, payment_id)
    assert response.status_code == 200
    assert response.json()["status"] == "canceled"


@pytest.mark.parametrize(
    ("path", "public"),
    [
        ([Status.DISPATCHED, Status.SUBMITTING], "processing"),
        ([Status.DISPATCHED, Status.SUBMITTING, Status.RETRY_SCHEDULED], "processing"),
        ([Status.DISPATCHED, Status.SUBMITTING, Status.SUCCEEDED], "succeeded"),
        ([Status.DISPATCHED, Status.SUBMITTING, Status.FAILED], "failed"),
    ],
)
def test_a_payment_whose_submission_began_is_not_cancelable(api, make_payment, path, public):
    # given a payment moved by the engine into submission (and maybe beyond)
    payment_id = make_payment()["id"]
    for status in path:
        advance(payment_id, status)

    # when the user cancels it
    response = cancel(api, payment_id)

    # then 409 payment_not_cancelable, and it is unchanged
    assert_problem(response, 409, "payment_not_cancelable")
    assert api.get(f"{PAYMENTS_URL}/{payment_id}").json()["status"] == public
    assert Payment.objects.get(pk=payment_id).canceled_at is None


def test_cancel_accepts_and_ignores_an_idempotency_key(api, make_payment):
    payment_id = make_payment()["id"]
    first = cancel(api, payment_id, HTTP_IDEMPOTENCY_KEY="cancel-1")
    second = cancel(api, payment_id, HTTP_IDEMPOTENCY_KEY="cancel-1")
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.json() == second.json()


def test_the_timeline_after_create_and_cancel(api, make_payment):
    # given a payment created then canceled
    payment_id = make_payment()["id"]
    canceled = cancel(api, payment_id).json()

    # when its events are read
    response = api.get(f"{PAYMENTS_URL}/{payment_id}/events")

    # then both transitions, oldest first, with public statuses
    assert response.status_code == 200
    results = response.json()["results"]
    assert [(e["from"], e["to"], e["reason"]) for e in results] == [
        (None, "scheduled", "created"),
        ("scheduled", "canceled", "canceled"),
    ]
    assert results[0]["at"] == api.get(f"{PAYMENTS_URL}/{payment_id}").json()["created_at"]
    assert results[1]["at"] == canceled["canceled_at"]
    assert results[1]["internal"] == {"from": "scheduled", "to": "canceled"}
    assert set(results[0]) == {"at", "from", "to", "reason", "attempt", "internal"}


def test_the_timeline_shows_every_internal_step_with_public_statuses(api, make_payment):
    # given a payment that was dispatched, submitted, retried and then succeeded
    payment_id = make_payment()["id"]
    for status in (Status.DISPATCHED, Status.SUBMITTING, Status.RETRY_SCHEDULED, Status.SUBMITTING, Status.SUCCEEDED):
        advance(payment_id, status)

    # when the timeline is read
    results = api.get(f"{PAYMENTS_URL}/{payment_id}/events").json()["results"]

    # then each transition is there, public from/to, the internal one beside it
    assert [(e["from"], e["to"]) for e in results] == [
        (None, "scheduled"),
        ("scheduled", "scheduled"),
        ("scheduled", "processing"),
        ("processing", "processing"),
        ("processing", "processing"),
        ("processing", "succeeded"),
    ]
    assert [e["internal"]["to"] for e in results] == [
        "scheduled",
        "dispatched",
        "submitting",
        "retry_scheduled",
        "submitting",
        "succeeded",
    ]


def test_a_failed_payment_shows_its_failure_and_gateway_reference(api, make_payment):
    payment_id = make_payment()["id"]
    advance(payment_id, Status.DISPATCHED)
    state_machine.transition(
        payment_id,
        to=Status.SUBMITTING,
        actor="test",
        reason="due",
        changes={"attempts": 1, "gateway_reference": "ch_123"},
    )
    state_machine.transition(
        payment_id,
        to=Status.FAILED,
        actor="test",
        reason="declined",
        changes={"failure_code": "card_declined", "failure_message": "The card was declined."},
    )
    body = api.get(f"{PAYMENTS_URL}/{payment_id}").json()
    assert body["status"] == "failed"
    assert body["failure"] == {"code": "card_declined", "message": "The card was declined."}
    assert body["gateway_reference"] == "ch_123"
    assert body["attempts"] == 1
