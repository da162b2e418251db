"""Per-user business limits (OWASP API4 / API6): pending payments and the daily scheduled amount.

Enforced in ``payments.services.payment_create``, so every entry point gets them, and
under a per-user advisory lock, so parallel requests cannot pass them together.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from rest_framework.test import APIClient

from accounts.models import User
from common.error_codes import ErrorCode, ProblemError
from payments import services
from payments.models import Payment
from payments.services import PaymentDraft, payment_create
from payments.statuses import Status
from tests.factories import PaymentDraftFactory, advance

PAYMENTS_URL = "/api/v1/payments"
# A fixed UTC day well inside the scheduling horizon, whatever today is.
DAY = (datetime.now(UTC) + timedelta(days=30)).replace(hour=0, minute=0, second=0, microsecond=0)
_keys = iter(range(1, 10_000_000))


def body(amount: str = "125.50", *, at: datetime | None = None, currency: str = "EUR") -> dict[str, Any]:
    scheduled_for = at or DAY + timedelta(hours=9)
    return {
        "amount": amount,
        "currency": currency,
        "payment_method": "pm_card_visa",
        "payee": {"name": "ACME Utilities", "account": "DE89370400440532013000"},
        "scheduled_for": scheduled_for.isoformat().replace("+00:00", "Z"),
    }


def post(api: APIClient, payload: dict[str, Any]) -> Any:
    return api.post(PAYMENTS_URL, payload, format="json", HTTP_IDEMPOTENCY_KEY=f"limit-{next(_keys)}")


def assert_limit_problem(response: Any, code: str) -> dict[str, Any]:
    assert response.status_code == 422, response.content
    assert response["Content-Type"].startswith("application/problem+json")
    problem: dict[str, Any] = json.loads(response.content)
    assert problem["code"] == code
    assert problem["type"].endswith(code)
    assert problem["status"] == 422
    return problem


def draft(amount_minor: int = 12550, *, at: datetime | None = None) -> PaymentDraft:
    scheduled_for = at or DAY + timedelta(hours=9)
    built: PaymentDraft = PaymentDraftFactory.build(amount_minor=amount_minor, scheduled_for=scheduled_for)
    return built


# --- pending payments ------------------------------------------------------------


@pytest.mark.django_db
def test_a_user_cannot_have_more_scheduled_payments_than_the_limit(api, outsider_api, owner, settings):
    settings.PAYMENTS_MAX_PENDING_PER_USER = 2
    # given two scheduled payments
    first = post(api, body())
    assert first.status_code == 201
    assert post(api, body()).status_code == 201

    # when a third is asked for
    response = post(api, body())

    # then 422 pending_payments_limit_exceeded, and nothing was created
    problem = assert_limit_problem(response, "pending_payments_limit_exceeded")
    assert problem["limit"] == 2
    assert Payment.objects.filter(owner=owner).count() == 2
    # another user has their own allowance
    assert post(outsider_api, body()).status_code == 201
    # a canceled payment frees its place
    assert api.post(f"{PAYMENTS_URL}/{first.json()['id']}/cancel").status_code == 200
    assert post(api, body()).status_code == 201


@pytest.mark.django_db
def test_queued_payments_count_as_pending_and_processing_ones_do_not(api, owner, settings):
    settings.PAYMENTS_MAX_PENDING_PER_USER = 2
    queued = post(api, body()).json()["id"]
    processing = post(api, body()).json()["id"]
    advance(queued, Status.DISPATCHED)
    assert_limit_problem(post(api, body()), "pending_payments_limit_exceeded")  # dispatched is still "scheduled"

    for status in (Status.DISPATCHED, Status.SUBMITTING):
        advance(processing, status)

    assert post(api, body()).status_code == 201


@pytest.mark.django_db
def test_the_limits_hold_for_every_entry_point_not_only_the_api(make_user, settings):
    # the service itself refuses, so an admin action, a command or a script cannot bypass it
    settings.PAYMENTS_MAX_PENDING_PER_USER = 1
    user = make_user()
    payment_create(owner=user, data=draft(), actor="test")
    with pytest.raises(ProblemError) as raised:
        payment_create(owner=user, data=draft(), actor="test")
    assert raised.value.code == ErrorCode.PENDING_PAYMENTS_LIMIT_EXCEEDED


# --- daily amount ----------------------------------------------------------------


@pytest.mark.django_db
def test_the_amount_scheduled_for_one_utc_day_is_capped_per_currency(api, owner, settings):
    settings.PAYMENTS_MAX_DAILY_AMOUNT = "300"
    # given 251.00 EUR scheduled for one UTC day (at its very start and end)
    assert post(api, body("125.50", at=DAY)).status_code == 201
    assert post(api, body("125.50", at=DAY + timedelta(hours=23, minutes=59))).status_code == 201

    # when 49.01 more is asked for that day, then refused; 49.00 (exactly the limit) is fine
    problem = assert_limit_problem(post(api, body("49.01")), "daily_amount_limit_exceeded")
    assert problem["errors"] == [
        {"field": "amount", "code": "daily_amount_limit_exceeded", "message": problem["detail"]}
    ]
    assert problem["limit"] == "300.00"
    assert DAY.date().isoformat() in problem["detail"]
    assert post(api, body("49.00")).status_code == 201
    assert_limit_problem(post(api, body("0.01")), "daily_amount_limit_exceeded")

    # the next UTC day and another currency have their own totals
    assert post(api, body("300.00", at=DAY + timedelta(days=1))).status_code == 201
    assert post(api, body("300", at=DAY + timedelta(hours=9), currency="JPY")).status_code == 201
    assert Payment.objects.filter(owner=owner).count() == 5


@pytest.mark.django_db
def test_a_day_is_the_utc_day_of_the_instant_not_the_local_one(api, settings):
    settings.PAYMENTS_MAX_DAILY_AMOUNT = "100"
    # 23:30 in New York on the evening before DAY is 03:30/04:30 UTC on DAY
    local_evening = {**body("100.00"), "scheduled_for": (DAY - timedelta(days=1)).strftime("%Y-%m-%dT23:30:00")}
    local_evening["time_zone"] = "America/New_York"
    assert post(api, local_evening).status_code == 201

    assert_limit_problem(post(api, body("0.01", at=DAY + timedelta(hours=12))), "daily_amount_limit_exceeded")
    assert post(api, body("100.00", at=DAY - timedelta(hours=1))).status_code == 201


@pytest.mark.django_db
def test_canceled_and_failed_payments_do_not_count_against_the_day(api, settings):
    settings.PAYMENTS_MAX_DAILY_AMOUNT = "200"
    canceled = post(api, body("150.00")).json()["id"]
    failed = post(api, body("50.00")).json()["id"]
    assert_limit_problem(post(api, body("150.00")), "daily_amount_limit_exceeded")

    assert api.post(f"{PAYMENTS_URL}/{canceled}/cancel").status_code == 200
    for status in (Status.DISPATCHED, Status.SUBMITTING, Status.FAILED):
        advance(failed, status)

    assert post(api, body("200.00")).status_code == 201


@pytest.mark.django_db
def test_a_refused_request_leaves_its_idempotency_key_free(api, settings):
    settings.PAYMENTS_MAX_DAILY_AMOUNT = "100"
    key = "limit-retry-key"
    refused = api.post(PAYMENTS_URL, body("150.00"), format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert_limit_problem(refused, "daily_amount_limit_exceeded")

    # the client lowers the amount and retries with the same key
    retried = api.post(PAYMENTS_URL, body("90.00"), format="json", HTTP_IDEMPOTENCY_KEY=key)

    assert retried.status_code == 201


# --- parallel requests of one user ---------------------------------------------------


def run_in_parallel(count: int, work: Callable[[int], object]) -> list[BaseException | None]:
    """``work(i)`` in ``count`` threads started together, each with its own database connection."""
    barrier = threading.Barrier(count)
    outcomes: list[BaseException | None] = [None] * count

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            work(index)
        except BaseException as exc:  # reported to the test
            outcomes[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes


@pytest.fixture
def slow_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Widen the gap between the limit check and the insert: without the lock, every thread would pass."""
    check = services._enforce_limits

    def slow(owner_id: int, data: PaymentDraft) -> None:
        check(owner_id, data)
        time.sleep(0.05)

    monkeypatch.setattr(services, "_enforce_limits", slow)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("slow_check")
def test_parallel_creates_never_exceed_the_pending_limit(settings):
    settings.PAYMENTS_MAX_PENDING_PER_USER = 3
    user = User.objects.create_user(username="racer")

    outcomes = run_in_parallel(8, lambda i: payment_create(owner=user, data=draft(), actor="test"))

    refused = [o for o in outcomes if isinstance(o, ProblemError)]
    assert [o for o in outcomes if o is not None and not isinstance(o, ProblemError)] == []
    assert {o.code for o in refused} == {ErrorCode.PENDING_PAYMENTS_LIMIT_EXCEEDED}
    assert Payment.objects.filter(owner=user).count() == 3
    assert len(refused) == 5


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("slow_check")
def test_parallel_creates_never_exceed_the_daily_amount(settings):
    settings.PAYMENTS_MAX_DAILY_AMOUNT = "500"
    user = User.objects.create_user(username="racer")

    outcomes = run_in_parallel(8, lambda i: payment_create(owner=user, data=draft(20000), actor="test"))

    assert sum(o is None for o in outcomes) == 2  # 2 x 200.00 fit under 500.00, a third would not
    assert {o.code for o in outcomes if isinstance(o, ProblemError)} == {ErrorCode.DAILY_AMOUNT_LIMIT_EXCEEDED}
    total = sum(Payment.objects.filter(owner=user).values_list("amount_minor", flat=True))
    assert total == 40000
