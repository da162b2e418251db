"""get_gateway(): the adapter chosen by settings, one per process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.core.exceptions import ImproperlyConfigured

from payments.gateways import build_gateway, get_gateway, reset_gateway_cache
from payments.gateways.sandbox import SandboxGateway
from payments.gateways.stripe import StripeGateway


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    reset_gateway_cache()
    yield
    reset_gateway_cache()


def test_it_defaults_to_the_sandbox_at_gateway_url(settings):
    settings.GATEWAY_URL = "http://127.0.0.1:8799/"
    settings.GATEWAY_TIMEOUT_SECONDS = 3.0

    gateway = get_gateway()

    assert isinstance(gateway, SandboxGateway)
    assert gateway.name == "sandbox"
    assert gateway.base_url == "http://127.0.0.1:8799"
    assert gateway.timeout == 3.0
    assert gateway.connect_timeout == 2.0


def test_it_is_built_once_per_process(settings):
    assert get_gateway() is get_gateway()


def test_changing_a_gateway_setting_rebuilds_it(settings):
    first = get_gateway()

    settings.GATEWAY_URL = "http://127.0.0.1:8798"

    assert get_gateway() is not first
    assert isinstance(get_gateway(), SandboxGateway)


def test_it_builds_stripe_when_asked(settings):
    settings.STRIPE_API_KEY = "sk_test_x"
    settings.GATEWAY_BACKEND = "stripe"

    gateway = get_gateway()

    assert isinstance(gateway, StripeGateway)
    assert gateway.name == "stripe"


def test_stripe_without_a_key_refuses_to_start(settings):
    settings.STRIPE_API_KEY = ""

    with pytest.raises(ImproperlyConfigured, match="STRIPE_API_KEY"):
        build_gateway("stripe")


def test_an_unknown_backend_refuses_to_start(settings):
    settings.GATEWAY_BACKEND = "paypal"

    with pytest.raises(ImproperlyConfigured, match="GATEWAY_BACKEND"):
        get_gateway()


def test_concurrency_can_be_tuned_by_setting(settings):
    settings.GATEWAY_MAX_CONCURRENCY = 8

    gateway = get_gateway()

    assert isinstance(gateway, SandboxGateway)
    assert gateway.concurrency == 8
