"""Per-address throttling (OWASP API4): every request from one client address, whoever it claims to be."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

from accounts.models import User
from config.throttling import ClientIpRateThrottle

PAYMENTS_URL = "/api/v1/payments"
pytestmark = pytest.mark.django_db


@pytest.fixture
def rates(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Throttle rates for one test: the address throttle reads the setting; DRF's read a class attribute."""
    chosen = {"user": "1000/min", "anon": "1000/min", "ip": "3/min"}
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": chosen}
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", chosen)
    cache.clear()
    yield chosen
    cache.clear()


def client_for(user: User | None, make_client: Any, address: str = "198.51.100.7", **headers: str) -> APIClient:
    client: APIClient = make_client(user) if user is not None else APIClient()
    client.defaults.update(REMOTE_ADDR=address, **headers)
    return client


def assert_rate_limited(response: Any) -> None:
    assert response.status_code == 429, response.content
    assert response["Content-Type"].startswith("application/problem+json")
    assert json.loads(response.content)["code"] == "rate_limited"
    assert 1 <= int(response["Retry-After"]) <= 120


def test_one_address_is_throttled_across_users_and_tokens(rates, make_user, make_client):
    alice_user, bob_user = make_user(), make_user()
    alice = client_for(alice_user, make_client)
    bob = client_for(bob_user, make_client)
    bob_elsewhere = client_for(bob_user, make_client, "203.0.113.9")

    # given three requests from one address, by two users (each far below their own limit)
    assert [alice.get(PAYMENTS_URL).status_code for _ in range(2)] == [200, 200]
    assert bob.get(PAYMENTS_URL).status_code == 200

    # then the address is at its limit, for every user and token
    assert_rate_limited(bob.get(PAYMENTS_URL))
    assert_rate_limited(alice.get(PAYMENTS_URL))
    # while another address is not
    assert bob_elsewhere.get(PAYMENTS_URL).status_code == 200


def test_failed_authentication_counts_and_is_throttled_too(rates, make_user, make_client):
    # DRF checks throttles only after authentication succeeds: bad tokens must count all the same
    guesser = client_for(None, make_client, HTTP_AUTHORIZATION="Bearer spt_guess")
    anonymous = client_for(None, make_client)

    assert guesser.get(PAYMENTS_URL).status_code == 401
    assert anonymous.get(PAYMENTS_URL).status_code == 401
    assert guesser.post(f"{PAYMENTS_URL}/x/cancel").status_code == 401

    assert_rate_limited(guesser.get(PAYMENTS_URL))
    assert_rate_limited(anonymous.get(PAYMENTS_URL))
    # and a real token from the same address waits as well
    assert_rate_limited(client_for(make_user(), make_client).get(PAYMENTS_URL))


def test_a_forged_x_forwarded_for_does_not_make_a_new_client(rates, make_user, make_client, settings):
    settings.TRUSTED_PROXY_COUNT = 0  # no proxy: the header is the client's own words
    user = make_user()
    for hop in range(3):
        assert client_for(user, make_client, HTTP_X_FORWARDED_FOR=f"10.0.0.{hop}").get(PAYMENTS_URL).status_code == 200

    assert_rate_limited(client_for(user, make_client, HTTP_X_FORWARDED_FOR="10.0.0.99").get(PAYMENTS_URL))


def test_the_anonymous_throttle_is_keyed_on_the_real_address_too(rates, make_client, settings):
    # DRF's own AnonRateThrottle, with NUM_PROXIES unset, keys on the whole X-Forwarded-For
    # header: a client could send a new one with each request and never be throttled.
    rates.update(anon="2/min", ip="1000/min")
    settings.TRUSTED_PROXY_COUNT = 0
    responses = [client_for(None, make_client, HTTP_X_FORWARDED_FOR=f"10.1.0.{i}").get(PAYMENTS_URL) for i in range(3)]

    assert [r.status_code for r in responses[:2]] == [401, 401]
    assert_rate_limited(responses[2])


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_allowance(rates, make_user, make_client, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    user = make_user()

    def via_proxy(client_address: str) -> APIClient:
        # the proxy (REMOTE_ADDR) appends the address it saw; anything to its left is client-supplied
        return client_for(user, make_client, "10.0.0.1", HTTP_X_FORWARDED_FOR=f"1.2.3.4, {client_address}")

    assert [via_proxy("192.0.2.1").get(PAYMENTS_URL).status_code for _ in range(3)] == [200, 200, 200]
    assert_rate_limited(via_proxy("192.0.2.1").get(PAYMENTS_URL))
    assert via_proxy("192.0.2.2").get(PAYMENTS_URL).status_code == 200


class FakeRequest:
    def __init__(self, address: str = "192.0.2.50") -> None:
        self.META = {"REMOTE_ADDR": address}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_window_slides_and_retry_after_is_exact(rates, monkeypatch):
    # 3 a minute; the counters live in 60-second windows, the previous one weighted by what is left of it
    clock = Clock(6_000_000.0)  # a window boundary
    monkeypatch.setattr(ClientIpRateThrottle, "timer", staticmethod(clock))

    def attempt() -> tuple[bool, float | None]:
        throttle = ClientIpRateThrottle()
        allowed = throttle.allow_request(FakeRequest(), None)  # type: ignore[arg-type]
        return allowed, None if allowed else throttle.wait()

    clock.now += 1
    assert [attempt()[0] for _ in range(3)] == [True, True, True]
    allowed, wait = attempt()
    assert not allowed
    # in the next window the estimate is 3 * (share of the window to come) + 1: room once 20 s into it
    assert wait == pytest.approx(79.0)
    clock.now += 78.9
    assert not attempt()[0]
    clock.now += 0.2
    assert attempt()[0]
    # one more is already too many: 3 * (1 - 20.1/60) + 1 + 1 > 3
    assert not attempt()[0]
