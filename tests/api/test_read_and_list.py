"""GET /api/v1/payments/{id} and GET /api/v1/payments: scoping, filters, keyset pagination."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from payments.api.pagination import encode_cursor
from payments.models import Payment
from payments.selectors import Cursor
from payments.services import PaymentDraft, payment_create
from payments.statuses import Status
from tests.factories import PaymentDraftFactory

from .conftest import PAYMENTS_URL, assert_problem

pytestmark = pytest.mark.django_db


def draft(scheduled_for: datetime, **overrides) -> PaymentDraft:
    values: dict[str, Any] = {"amount_minor": 1000, "payee_name": "ACME", "payee_account": "000123454321"}
    values |= {"scheduled_for": scheduled_for, "scheduled_local": "", **overrides}
    built: PaymentDraft = PaymentDraftFactory.build(**values)
    return built


def test_it_returns_the_callers_payment(api, make_payment):
    created = make_payment()
    response = api.get(f"{PAYMENTS_URL}/{created['id']}")
    assert response.status_code == 200
    assert response.json() == created


def problem_without_request_id(response):
    body = response.json()
    body.pop("request_id")
    return body


@pytest.mark.parametrize("suffix", ["", "/events"])
def test_another_users_payment_is_not_found_exactly_like_a_missing_one(api, outsider_api, make_payment, suffix):
    # given alice's payment
    payment_id = make_payment()["id"]

    # when mallory reads it, and reads an id that does not exist
    theirs = outsider_api.get(f"{PAYMENTS_URL}/{payment_id}{suffix}")
    missing = outsider_api.get(f"{PAYMENTS_URL}/{uuid.uuid4()}{suffix}")

    # then both are the same 404 not_found: no existence oracle
    assert_problem(theirs, 404, "not_found")
    assert_problem(missing, 404, "not_found")
    assert problem_without_request_id(theirs) == problem_without_request_id(missing)


def test_another_users_payment_cannot_be_canceled(api, outsider_api, make_payment):
    payment_id = make_payment()["id"]
    theirs = outsider_api.post(f"{PAYMENTS_URL}/{payment_id}/cancel")
    missing = outsider_api.post(f"{PAYMENTS_URL}/{uuid.uuid4()}/cancel")
    assert_problem(theirs, 404, "not_found")
    assert problem_without_request_id(theirs) == problem_without_request_id(missing)
    assert Payment.objects.get(pk=payment_id).status == Status.SCHEDULED


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "123", "0" * 200, "%00"])
@pytest.mark.parametrize(("method", "suffix"), [("get", ""), ("get", "/events"), ("post", "/cancel")])
def test_an_id_that_is_not_a_uuid_is_not_found(api, bad_id, method, suffix):
    response = getattr(api, method)(f"{PAYMENTS_URL}/{bad_id}{suffix}")
    assert_problem(response, 404, "not_found")


def test_the_list_shows_only_the_callers_payments(api, owner, outsider, make_payment):
    mine = make_payment()["id"]
    payment_create(owner=outsider, data=draft(datetime(2027, 1, 1, tzinfo=UTC)), actor="test")
    response = api.get(PAYMENTS_URL)
    assert response.status_code == 200
    assert [p["id"] for p in response.json()["results"]] == [mine]
    assert response.json()["next"] is None


def walk(api, url):
    """Follow `next` links to the end; returns every payment id seen, in order, and the page count."""
    seen: list[str] = []
    pages = 0
    while url:
        response = api.get(url)
        assert response.status_code == 200, response.content
        body = response.json()
        seen.extend(p["id"] for p in body["results"])
        pages += 1
        url = body["next"]
    return seen, pages


def test_pagination_walks_250_payments_with_limit_7_seeing_each_once_in_order(api, owner):
    # given 250 payments, many sharing a scheduled_for (ties are ordered by id)
    rng = random.Random(7)
    base = datetime(2027, 1, 1, tzinfo=UTC)
    for _ in range(250):
        payment_create(owner=owner, data=draft(base + timedelta(minutes=rng.randrange(60))), actor="test")
    expected = [
        str(pk)
        for pk in Payment.objects.filter(owner=owner).order_by("scheduled_for", "id").values_list("pk", flat=True)
    ]

    # when the client follows `next` with limit=7
    seen, pages = walk(api, f"{PAYMENTS_URL}?limit=7")

    # then every payment is seen exactly once, in (scheduled_for, id) order, in ceil(250/7) pages
    assert seen == expected
    assert pages == 36


def test_a_new_payment_between_pages_neither_repeats_nor_skips_rows(api, owner):
    base = datetime(2027, 1, 1, tzinfo=UTC)
    for hour in range(10):
        payment_create(owner=owner, data=draft(base + timedelta(hours=hour)), actor="test")
    first = api.get(f"{PAYMENTS_URL}?limit=5").json()
    # a payment inserted before the cursor does not shift the next page
    payment_create(owner=owner, data=draft(base - timedelta(hours=1)), actor="test")
    second = api.get(first["next"]).json()
    ids = [p["id"] for p in first["results"] + second["results"]]
    assert len(set(ids)) == 10
    assert second["next"] is None


def test_filters_combine_with_pagination(api, owner):
    # given payments over 30 days, every third one canceled
    base = datetime(2027, 1, 1, tzinfo=UTC)
    for day in range(30):
        payment = payment_create(owner=owner, data=draft(base + timedelta(days=day)), actor="test")
        if day % 3 == 0:
            Payment.objects.filter(pk=payment.pk).update(status=Status.CANCELED)
    # a dispatched payment is still "scheduled" in public
    Payment.objects.filter(scheduled_for=base + timedelta(days=1)).update(status=Status.DISPATCHED)

    # when filtering on status and a half-open window of scheduled_for, 4 per page
    url = (
        f"{PAYMENTS_URL}?status=scheduled&scheduled_after=2027-01-05T00:00:00Z"
        "&scheduled_before=2027-01-20T00:00:00%2B00:00&limit=4"
    )
    seen, _ = walk(api, url)

    # then exactly the matching payments, in order, across pages
    expected = [
        str(pk)
        for pk in Payment.objects.filter(
            owner=owner,
            status__in=[Status.SCHEDULED, Status.DISPATCHED],
            scheduled_for__gte=base + timedelta(days=4),
            scheduled_for__lt=base + timedelta(days=19),
        )
        .order_by("scheduled_for", "id")
        .values_list("pk", flat=True)
    ]
    assert seen == expected
    assert len(expected) == 10
    # and a list of statuses works too, including the internal ones behind "scheduled"
    all_ids, _ = walk(api, f"{PAYMENTS_URL}?status=scheduled,canceled&limit=200")
    assert len(all_ids) == 30
    dispatched, _ = walk(api, f"{PAYMENTS_URL}?status=scheduled&scheduled_before=2027-01-03T00:00:00Z")
    assert len(dispatched) == 1


def test_next_keeps_the_filters_and_is_an_absolute_url(api, owner):
    base = datetime(2027, 1, 1, tzinfo=UTC)
    for minute in range(3):
        payment_create(owner=owner, data=draft(base + timedelta(minutes=minute)), actor="test")
    next_url = api.get(f"{PAYMENTS_URL}?limit=2&status=scheduled").json()["next"]
    parts = urlsplit(next_url)
    assert (parts.scheme, parts.netloc, parts.path) == ("http", "testserver", PAYMENTS_URL)
    query = parse_qs(parts.query)
    assert query["limit"] == ["2"]
    assert query["status"] == ["scheduled"]
    assert query["cursor"]


def test_limit_defaults_to_50_and_is_clamped_to_200(api, owner):
    base = datetime(2027, 1, 1, tzinfo=UTC)
    for minute in range(205):
        payment_create(owner=owner, data=draft(base + timedelta(minutes=minute)), actor="test")
    assert len(api.get(PAYMENTS_URL).json()["results"]) == 50
    clamped = api.get(f"{PAYMENTS_URL}?limit=1000").json()
    assert len(clamped["results"]) == 200
    assert clamped["next"] is not None


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=-1",
        "limit=abc",
        "limit=1.5",
        "status=pending",
        "status=scheduled,bogus",
        "foo=bar",
        "scheduled_after=2027-01-01T00:00:00",
        "scheduled_before=yesterday",
    ],
)
def test_it_rejects_invalid_filters(api, query):
    assert_problem(api.get(f"{PAYMENTS_URL}?{query}"), 422, "invalid_filter")


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "!!!",
        encode_cursor(Cursor(datetime(2027, 1, 1, tzinfo=UTC), uuid.uuid4()))[:-3],
        "x" * 500,
        "djF8bm90LWEtZGF0ZXx4",
    ],
)
def test_it_rejects_an_invalid_cursor(api, cursor):
    assert_problem(api.get(f"{PAYMENTS_URL}?cursor={cursor}"), 422, "invalid_cursor")


def test_an_empty_list_has_no_next(api):
    assert api.get(PAYMENTS_URL).json() == {"results": [], "next": None}
