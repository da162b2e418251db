"""The throttles on the production cache: django-redis against the real Redis server (``TEST_REDIS_URL``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.core.cache import caches
from rest_framework.throttling import SimpleRateThrottle

from config.logging import OncePerInterval
from config.settings.base import redis_cache

PAYMENTS_URL = "/api/v1/payments"
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
pytestmark = pytest.mark.django_db


@pytest.fixture
def redis_throttles(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    """The API on a Redis cache, with small rates; the test database of the server is emptied around it."""
    server = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
    server.flushdb()
    settings.CACHES = {"default": redis_cache(REDIS_URL)}
    rates = {"user": "3/min", "anon": "3/min", "ip": "6/min"}
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", rates)
    yield server
    server.flushdb()


def test_the_user_throttle_counts_in_redis(redis_throttles, make_user, make_client):
    alice, bob = make_client(make_user()), make_client(make_user())
    for client in (alice, bob):
        client.defaults.update(REMOTE_ADDR="198.51.100.20")

    # given three requests by one user (the user rate), from an address below its own rate
    assert [alice.get(PAYMENTS_URL).status_code for _ in range(3)] == [200, 200, 200]

    # then her fourth is refused (it still counts for the address), another user's is not,
    # and the address is full at its sixth request
    assert alice.get(PAYMENTS_URL).status_code == 429
    assert bob.get(PAYMENTS_URL).status_code == 200
    assert bob.get(PAYMENTS_URL).status_code == 200
    assert bob.get(PAYMENTS_URL).status_code == 429
    # and the counters are in Redis (a refused request is not counted by the throttle that refused it)
    counters = {key.decode(): int(redis_throttles.get(key) or 0) for key in redis_throttles.keys("*throttle_*")}
    by_scope = {scope: sum(v for k, v in counters.items() if f"throttle_{scope}_" in k) for scope in ("user", "ip")}
    assert by_scope == {"user": 6, "ip": 6}, counters


def test_one_client_and_pool_per_process(redis_throttles):
    # Django's own Redis backend builds a client per operation; django-redis keeps one.
    cache: Any = caches["default"]  # django_redis.cache.RedisCache
    cache.set("a", 1)
    first = cache.client.get_client(write=True)
    cache.get("a")
    assert cache.client.get_client(write=True) is first


def test_throttles_fail_open_when_redis_is_down(settings, make_user, make_client, monkeypatch, caplog):
    # given the cache points at a port where nothing listens
    settings.CACHES = {"default": redis_cache("redis://127.0.0.1:9/0")}
    rates = {"user": "1/min", "anon": "1/min", "ip": "1/min"}
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", rates)
    client = make_client(make_user())
    # (logging may have been configured more than once in this process: each configuration adds its filter)
    limiters = [f for f in logging.getLogger("django_redis.cache").filters if isinstance(f, OncePerInterval)]
    assert limiters
    for limiter in limiters:
        monkeypatch.setattr(limiter, "_next", 0.0)

    # when requests arrive (more than the rates allow), each making several cache calls
    codes = [client.get(PAYMENTS_URL).status_code for _ in range(3)]

    # then the API keeps answering, and the failure is logged once, not once per cache call
    assert codes == [200, 200, 200]
    assert [record.name for record in caplog.records if "django_redis" in record.name] == ["django_redis.cache"]
