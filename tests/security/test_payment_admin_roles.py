"""The payments admin per role (least privilege, OWASP API3/API5, PCI DSS 7.2): masked for everyone.

support: sees masked payments, may cancel; operations: sees masked payments, may not cancel;
auditor: sees payment timelines only. Nobody sees payee name, description or metadata values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib import admin
from django.test import Client

from accounts.models import User
from payments.models import IdempotencyRecord, Payment, PaymentEvent
from payments.statuses import Status

from .conftest import DESCRIPTION, IBAN, METADATA, PAYEE_NAME, PAYMENT_METHOD

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("staff_groups")]

PAYMENTS = "/admin/payments/payment/"
EVENTS = "/admin/payments/paymentevent/"
# What must never appear in an admin page: the values, and distinctive parts of them.
CLEAR_VALUES = [PAYEE_NAME, "Quartermaine", "Zebulon", DESCRIPTION, "Rosebud", IBAN, PAYMENT_METHOD]
CLEAR_VALUES += list(METADATA.values())
MASKED = ["Z***", "R***", "•••• 3000", "tenant, unit"]  # name, description, account, metadata keys


@pytest.fixture
def payment(make_payment: Callable[..., Payment]) -> Payment:
    created = make_payment()
    PaymentEvent.objects.create(payment=created, to_status=Status.SCHEDULED, reason="created", actor="user:1")
    return created


@pytest.fixture
def staff_client(make_staff: Callable[..., User], verified_client: Callable[[User], Client]) -> Callable[..., Client]:
    def make(*roles: str) -> Client:
        return verified_client(make_staff(*roles))

    return make


def assert_masked(page: str) -> None:
    for value in CLEAR_VALUES:
        assert value not in page, value
    for masked in MASKED:
        assert masked in page, masked


def cancel_action(client: Client, payment: Payment) -> Any:
    return client.post(PAYMENTS, {"action": "cancel", "_selected_action": [str(payment.pk)]}, follow=True)


def test_support_sees_masked_payments_and_can_cancel(staff_client, payment):
    client = staff_client("support")

    listing = client.get(PAYMENTS)
    detail = client.get(f"{PAYMENTS}{payment.pk}/change/")

    assert listing.status_code == detail.status_code == 200
    assert_masked(detail.content.decode())
    listing_page = listing.content.decode()
    assert "Z***" in listing_page
    assert "•••• 3000" in listing_page
    assert PAYEE_NAME not in listing_page
    assert "created" in detail.content.decode()  # the timeline, inline
    assert 'value="cancel"' in listing_page

    assert cancel_action(client, payment).status_code == 200
    payment.refresh_from_db()
    assert payment.status == Status.CANCELED


def test_operations_see_the_same_masked_view_but_cannot_cancel(staff_client, payment):
    client = staff_client("operations")

    listing = client.get(PAYMENTS)
    detail = client.get(f"{PAYMENTS}{payment.pk}/change/")

    assert listing.status_code == detail.status_code == 200
    assert_masked(detail.content.decode())
    assert 'value="cancel"' not in listing.content.decode()
    # posting the action anyway changes nothing
    cancel_action(client, payment)
    payment.refresh_from_db()
    assert payment.status == Status.SCHEDULED
    # nor can the change form be posted
    assert client.post(f"{PAYMENTS}{payment.pk}/change/", {}).status_code == 403


def test_auditors_read_timelines_but_not_payments(staff_client, payment):
    client = staff_client("auditor")
    event = PaymentEvent.objects.get(payment=payment)

    listing = client.get(EVENTS)
    one_payment = client.get(f"{EVENTS}?q={payment.pk}")
    detail = client.get(f"{EVENTS}{event.pk}/change/")

    assert listing.status_code == one_payment.status_code == detail.status_code == 200
    for page in (listing, one_payment, detail):
        text = page.content.decode()
        assert str(payment.pk) in text
        for value in CLEAR_VALUES:
            assert value not in text
    assert "created" in one_payment.content.decode()
    # no payment data, and the timeline is read-only
    assert client.get(PAYMENTS).status_code == 403
    assert client.get(f"{PAYMENTS}{payment.pk}/change/").status_code == 403
    assert client.get(f"{EVENTS}add/").status_code == 403
    assert client.post(f"{EVENTS}{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert PaymentEvent.objects.filter(pk=event.pk).exists()


def test_events_search_by_another_payment_id_finds_nothing_of_this_one(staff_client, payment, make_payment):
    client = staff_client("auditor")
    other = make_payment()

    page = client.get(f"{EVENTS}?q={other.pk}").content.decode()

    assert str(payment.pk) not in page


def test_even_a_superuser_sees_only_masked_values(verified_client, payment):
    superuser = User.objects.create_superuser(username="root", password="x-very-long-password")
    client = verified_client(superuser)

    assert_masked(client.get(f"{PAYMENTS}{payment.pk}/change/").content.decode())


def test_idempotency_records_are_not_in_the_admin(verified_client):
    # their stored responses repeat payee names and descriptions
    superuser = User.objects.create_superuser(username="root", password="x-very-long-password")
    client = verified_client(superuser)

    assert not admin.site.is_registered(IdempotencyRecord)
    assert client.get("/admin/payments/idempotencyrecord/").status_code == 404
