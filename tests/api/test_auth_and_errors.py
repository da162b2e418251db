"""Authentication, throttling and the error shape across every endpoint."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.utils import timezone
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

from accounts.models import ApiToken
from accounts.services import token_issue, token_revoke

from .conftest import PAYMENTS_URL, assert_problem, new_key, payment_body

pytestmark = pytest.mark.django_db

ENDPOINTS = [
    ("post", PAYMENTS_URL),
    ("get", PAYMENTS_URL),
    ("get", f"{PAYMENTS_URL}/{uuid.UUID(int=1)}"),
    ("post", f"{PAYMENTS_URL}/{uuid.UUID(int=1)}/cancel"),
    ("get", f"{PAYMENTS_URL}/{uuid.UUID(int=1)}/events"),
]


def call(client, method, url):
    if method == "post":
        return client.post(url, payment_body(), format="json", HTTP_IDEMPOTENCY_KEY=new_key())
    return client.get(url)


def client_with(header: str | None) -> APIClient:
    client = APIClient()
    if header is not None:
        client.credentials(HTTP_AUTHORIZATION=header)
    return client


@pytest.mark.parametrize(("method", "url"), ENDPOINTS)
def test_it_answers_401_without_a_token(method, url):
    response = call(client_with(None), method, url)
    assert_problem(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header",
    ["Bearer spt_not-a-real-token", "Bearer ", "Token abc", "Basic dXNlcjpwYXNz", "Bearer a b", "spt_abc"],
)
def test_it_answers_401_for_a_wrong_token(header, owner):
    assert_problem(call(client_with(header), "get", PAYMENTS_URL), 401, "not_authenticated")


def test_it_answers_401_for_an_expired_token(owner):
    issued = token_issue(user=owner, actor="test", expires_in=timedelta(days=1))
    ApiToken.objects.filter(pk=issued.token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert_problem(call(client_with(f"Bearer {issued.raw}"), "get", PAYMENTS_URL), 401, "not_authenticated")


def test_it_answers_401_for_a_revoked_token(owner):
    issued = token_issue(user=owner, actor="test")
    assert call(client_with(f"Bearer {issued.raw}"), "get", PAYMENTS_URL).status_code == 200
    token_revoke(token_id=issued.token.pk, actor="test")
    assert_problem(call(client_with(f"Bearer {issued.raw}"), "get", PAYMENTS_URL), 401, "not_authenticated")


def test_it_answers_401_for_a_deactivated_user(owner):
    issued = token_issue(user=owner, actor="test")
    owner.is_active = False
    owner.save(update_fields=["is_active"])
    assert_problem(call(client_with(f"Bearer {issued.raw}"), "get", PAYMENTS_URL), 401, "not_authenticated")


@pytest.fixture
def strict_throttle(monkeypatch, settings):
    # DRF's anonymous throttle reads its rate once, into a class attribute: overriding the
    # setting alone does not reach it, so the attribute is patched as well.
    rates = {"user": "3/min", "anon": "3/min", "ip": "1000/min"}  # the per-address throttle: tests/security
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", rates)
    cache.clear()
    yield
    cache.clear()


def test_it_answers_429_rate_limited_with_retry_after(api, strict_throttle):
    # given a limit of 3 requests a minute
    for _ in range(3):
        assert api.get(PAYMENTS_URL).status_code == 200

    # when a 4th comes within the minute
    response = api.get(PAYMENTS_URL)

    # then 429 rate_limited, with how long to wait (the sliding window may reach into the next minute)
    assert_problem(response, 429, "rate_limited")
    assert 1 <= int(response["Retry-After"]) <= 120


def test_the_rate_limit_is_per_user(api, outsider_api, strict_throttle):
    for _ in range(3):
        api.get(PAYMENTS_URL)
    assert api.get(PAYMENTS_URL).status_code == 429
    assert outsider_api.get(PAYMENTS_URL).status_code == 200


@pytest.mark.parametrize(
    ("method", "url"),
    [("delete", f"{PAYMENTS_URL}/{uuid.UUID(int=1)}"), ("put", PAYMENTS_URL), ("get", f"{PAYMENTS_URL}/x/cancel")],
)
def test_a_method_an_endpoint_does_not_have_is_405_problem(api, method, url):
    assert_problem(getattr(api, method)(url), 405, "method_not_allowed")


def test_an_unknown_api_path_is_404_problem(api):
    assert_problem(api.get("/api/v1/nothing-here"), 404, "not_found")


def test_a_generated_request_id_is_returned_when_the_client_sent_none(api):
    response = api.get(PAYMENTS_URL)
    assert len(response["X-Request-ID"]) == 32
    problem = assert_problem(api.get(f"{PAYMENTS_URL}/{uuid.uuid4()}"), 404, "not_found")
    assert problem["request_id"]
