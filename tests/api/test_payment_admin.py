"""The support staff's payment admin: masked, read-only, with a cancel action."""

from __future__ import annotations

import pytest

from accounts.models import User
from audit.models import AuditEvent
from payments.models import Payment, PaymentEvent
from payments.statuses import Status
from tests.factories import advance

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(db, verified_client):  # -> (client, staff user)
    # The admin wants a verified second factor (django-otp): log in, then mark the session verified.
    staff = User.objects.create_superuser(username="support", password="x-very-long-password")
    return verified_client(staff), staff


def test_the_changelist_and_change_page_never_show_the_account_or_the_token(staff_client, make_payment):
    staff_client, _ = staff_client
    # given a payment
    payment_id = make_payment(payment_method="pm_secret_token_value")["id"]

    # when support opens the list and the payment
    listing = staff_client.get("/admin/payments/payment/?status__exact=scheduled")
    detail = staff_client.get(f"/admin/payments/payment/{payment_id}/change/")

    # then they see the payment with a masked account and its timeline, never the secrets
    assert listing.status_code == 200
    assert detail.status_code == 200
    page = detail.content.decode()
    assert "•••• 4321" in page
    assert "DE21370400440532014321" not in page
    assert "pm_secret_token_value" not in page
    assert "created" in page  # the creation event, inline
    # and nothing is editable: no save button for money fields
    assert 'name="amount_minor"' not in page


def test_search_by_id_or_username_finds_the_payment(staff_client, make_payment):
    staff_client, _ = staff_client
    payment_id = make_payment()["id"]
    for term in (payment_id, "alice"):
        response = staff_client.get(f"/admin/payments/payment/?q={term}")
        assert response.status_code == 200
        assert payment_id in response.content.decode()


def test_the_cancel_action_cancels_through_the_service_and_audits(staff_client, make_payment):
    staff_client, staff = staff_client
    # given one cancelable and one submitting payment
    cancelable = make_payment()["id"]
    submitting = make_payment()["id"]
    for status in (Status.DISPATCHED, Status.SUBMITTING):
        advance(submitting, status)

    # when support runs the cancel action on both
    response = staff_client.post(
        "/admin/payments/payment/",
        {"action": "cancel", "_selected_action": [cancelable, submitting]},
        follow=True,
    )

    # then the cancelable one is canceled by the staff member, the other untouched
    assert response.status_code == 200
    staff_id = staff.pk
    assert Payment.objects.get(pk=cancelable).status == Status.CANCELED
    assert Payment.objects.get(pk=submitting).status == Status.SUBMITTING
    event = PaymentEvent.objects.filter(payment_id=cancelable).latest("at", "id")
    assert event.actor == f"staff:{staff_id}"
    assert AuditEvent.objects.filter(
        actor=f"staff:{staff_id}", action="payment.canceled", target_id=cancelable
    ).exists()
    assert "could not be canceled" in response.content.decode()


def test_support_cannot_add_or_delete_payments(staff_client):
    staff_client, _ = staff_client
    assert staff_client.get("/admin/payments/payment/add/").status_code == 403
