"""StripeGateway with Stripe's HTTP answers replayed from tests/gateways/fixtures (no network).

The stub sits at the transport: the real ``stripe.StripeClient`` encodes the request, our
``HttpxStripeClient`` sends it through an ``httpx.MockTransport``, and the SDK parses the
recorded answer, so these tests cover the SDK's own error mapping and retries too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from django.core.exceptions import ImproperlyConfigured

from payments.gateways.base import ChargeRequest, GatewayLookupError, OutcomeKind
from payments.gateways.stripe import HttpxStripeClient, StripeGateway

FIXTURES = Path(__file__).parent / "fixtures"
API_KEY = "sk_test_51QdR7wLkdIwHu7ixFAKEFAKEFAKE"

MakeRequest = Callable[..., ChargeRequest]
Step = str | type[httpx.TransportError]  # a fixture name, or the network failure the transport raises


def recorded(name: str) -> httpx.Response:
    data = json.loads((FIXTURES / f"{name}.json").read_text())
    return httpx.Response(data["status"], headers=data["headers"], json=data["body"])


class RecordedStripe:
    """Answers each request with the next step; keeps every request it saw."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert self.steps, f"unexpected request {request.method} {request.url}"
        step = self.steps.pop(0)
        if isinstance(step, str):
            return recorded(step)
        raise step("stubbed network failure", request=request)

    def answer(self, *steps: Step) -> None:
        self.steps.extend(steps)

    def form(self, index: int = -1) -> dict[str, str]:
        """The form-encoded body of a request, one value per field."""
        fields = parse_qs(self.requests[index].content.decode(), keep_blank_values=True, strict_parsing=True)
        return {name: values[0] for name, values in fields.items()}


@pytest.fixture
def stripe_api() -> RecordedStripe:
    return RecordedStripe()


@pytest.fixture(autouse=True)
def _no_retry_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDK waits 0.5-1 s between its retries; the tests need not.
    monkeypatch.setattr(HttpxStripeClient, "_sleep_time_seconds", lambda self, num_retries: 0.0)


@pytest.fixture
def make_gateway(stripe_api: RecordedStripe) -> Iterator[Callable[..., StripeGateway]]:
    made: list[StripeGateway] = []

    def make(**options: Any) -> StripeGateway:
        gateway = StripeGateway(API_KEY, transport=httpx.MockTransport(stripe_api), timeout=5.0, **options)
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        gateway.close()


@pytest.fixture
def gateway(make_gateway: Callable[..., StripeGateway]) -> StripeGateway:
    return make_gateway()


# --- the request ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency", "minor", "sent_currency"),
    [("125.50", "EUR", "12550", "eur"), ("500", "JPY", "500", "jpy"), ("1.234", "BHD", "1234", "bhd")],
)
def test_it_creates_a_confirmed_off_session_payment_intent(
    gateway, stripe_api, make_request: MakeRequest, amount, currency, minor, sent_currency
):
    stripe_api.answer("payment_intent_succeeded")
    request = make_request(amount=Decimal(amount), currency=currency)

    gateway.charge(request)

    [sent] = stripe_api.requests
    assert sent.method == "POST"
    assert sent.url == "https://api.stripe.com/v1/payment_intents"
    assert sent.headers["Idempotency-Key"] == request.idempotency_key
    assert sent.headers["Authorization"] == f"Bearer {API_KEY}"
    assert stripe_api.form() == {
        "amount": minor,
        "currency": sent_currency,
        "payment_method": "pm_card_visa",
        "confirm": "true",
        "off_session": "true",
        "automatic_payment_methods[enabled]": "true",
        "automatic_payment_methods[allow_redirects]": "never",
        "metadata[payment_id]": request.payment_id,
        "metadata[idempotency_key]": request.idempotency_key,
    }


def test_it_never_sends_an_amount_it_would_have_to_round(gateway, stripe_api, make_request: MakeRequest):
    outcome = gateway.charge(make_request(amount=Decimal("1.005"), currency="EUR"))

    assert stripe_api.requests == []
    assert outcome.kind is OutcomeKind.DECLINED
    assert outcome.failure_code == "gateway_rejected"
    assert outcome.needs_operator


def test_it_never_logs_the_payment_method(gateway, stripe_api, make_request, caplog):
    stripe_api.answer("invalid_request_no_such_payment_method")
    caplog.set_level(logging.DEBUG)

    outcome = gateway.charge(make_request(payment_method="pm_card_gone"))

    assert outcome.kind is OutcomeKind.DECLINED
    assert "pm_card_gone" not in caplog.text
    assert "pm_card_gone" not in outcome.detail
    assert "resource_missing" in caplog.text  # our own line says what happened
    # the SDK's own INFO/DEBUG lines (request bodies, raw error messages) never reach a handler
    assert not [r for r in caplog.records if r.name == "stripe" and r.levelno < logging.WARNING]


# --- outcomes ------------------------------------------------------------------------------------------


def test_a_succeeded_payment_intent_is_succeeded(gateway, stripe_api, make_request: MakeRequest):
    stripe_api.answer("payment_intent_succeeded")

    outcome = gateway.charge(make_request())

    assert outcome.kind is OutcomeKind.SUCCEEDED
    assert outcome.reference == "pi_3QdR8yLkdIwHu7ix0a1b2c3d"


@pytest.mark.parametrize(
    ("fixture", "code", "reference"),
    [
        ("card_declined_insufficient_funds", "insufficient_funds", "pi_3QdR9ALkdIwHu7ix1q2w3e4r"),
        # card networks ask merchants not to tell the payer about suspected fraud
        ("card_declined_fraudulent", "card_declined", "pi_3QdR9BLkdIwHu7ix0m1n2b3v"),
        ("card_authentication_required", "authentication_required", "pi_3QdR9CLkdIwHu7ix0p9o8i7u"),
    ],
)
def test_a_card_error_is_declined_with_a_safe_message(gateway, stripe_api, make_request, fixture, code, reference):
    stripe_api.answer(fixture)

    outcome = gateway.charge(make_request())

    assert outcome.kind is OutcomeKind.DECLINED
    assert outcome.failure_code == code
    assert outcome.failure_message
    assert "fraud" not in outcome.failure_message.lower()
    assert outcome.reference == reference
    assert not outcome.needs_operator
    assert len(stripe_api.requests) == 1  # a decline is never retried by the SDK


def test_a_payment_intent_that_requires_action_is_declined_off_session(gateway, stripe_api, make_request):
    stripe_api.answer("payment_intent_requires_action")

    outcome = gateway.charge(make_request())

    assert outcome.kind is OutcomeKind.DECLINED
    assert outcome.failure_code == "authentication_required"
    assert outcome.reference == "pi_3QdR8yLkdIwHu7ix0a1b2c3d"


def test_a_processing_payment_intent_is_unknown(gateway, stripe_api, make_request: MakeRequest):
    stripe_api.answer("payment_intent_processing")

    outcome = gateway.charge(make_request())

    assert outcome.kind is OutcomeKind.UNKNOWN
    assert outcome.in_progress  # accepted and settling (SEPA, ACH): pending, not trouble at Stripe
    assert not outcome.needs_operator
    assert outcome.reference == "pi_3QdR8yLkdIwHu7ix0a1b2c3d"


def test_a_processing_error_card_error_is_retryable(gateway, stripe_api, make_request: MakeRequest):
    stripe_api.answer("card_processing_error")

    assert gateway.charge(make_request()).kind is OutcomeKind.RETRYABLE


def test_a_rate_limit_is_retryable_with_its_retry_after(gateway, stripe_api, make_request: MakeRequest):
    stripe_api.answer("rate_limit")

    outcome = gateway.charge(make_request())

    assert outcome.kind is OutcomeKind.RETRYABLE
    assert outcome.retry_after_seconds == 2.0
    assert len(stripe_api.requests) == 1


def test_a_500_is_retried_by_the_sdk_under_the_same_key(gateway, stripe_api, make_request: MakeRequest):
    stripe_api.answer("api_error_500", "payment_intent_succeeded")
    request = make_request()

    outcome = gateway.charge(request)

    assert outcome.kind is OutcomeKind.SUCCEEDED
    assert [sent.headers["Idempotency-Key"] for sent in stripe_api.requests] == [request.idempotency_key] * 2


def test_a_500_after_every_retry_is_unknown(gateway, stripe_api, make_request: MakeRequest):
    stripe_api.answer("api_error_500", "api_error_500", "api_error_500")

    outcome = gateway.charge(make_request())

    assert outcome.kind is OutcomeKind.UNKNOWN
    assert "APIError HTTP 500" in outcome.detail
    assert len(stripe_api.requests) == 3  # the first try and max_network_retries=2


def test_an_idempotency_error_is_unknown_and_pages_an_operator(gateway, stripe_api, make_request: MakeRequest):
    stripe_api.answer("idempotency_error")

    outcome = gateway.charge(make_request())

    assert outcome.kind is OutcomeKind.UNKNOWN
    assert outcome.needs_operator
    assert "IdempotencyError" in outcome.detail


@pytest.mark.parametrize(
    ("fixture", "error"),
    [
        ("authentication_error", "AuthenticationError"),
        ("permission_error", "PermissionError"),
        ("invalid_request_no_such_payment_method", "InvalidRequestError"),
    ],
)
def test_a_refused_request_is_a_terminal_gateway_rejection(gateway, stripe_api, make_request, fixture, error):
    stripe_api.answer(fixture)

    outcome = gateway.charge(make_request())

    assert outcome.kind is OutcomeKind.DECLINED
    assert outcome.failure_code == "gateway_rejected"
    assert outcome.needs_operator
    assert error in outcome.detail
    assert "sk_test" not in outcome.detail
    assert "rk_test" not in outcome.detail


# --- network failures and the SDK's retries --------------------------------------------------------------


def test_a_connection_never_made_is_retryable(gateway, stripe_api, make_request: MakeRequest):
    stripe_api.answer(httpx.ConnectError, httpx.ConnectTimeout, httpx.ConnectError)

    outcome = gateway.charge(make_request())

    assert outcome.kind is OutcomeKind.RETRYABLE
    assert len(stripe_api.requests) == 3


@pytest.mark.parametrize("failure", [httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError])
def test_a_request_lost_after_sending_is_unknown(make_gateway, stripe_api, make_request, failure):
    stripe_api.answer(failure)

    outcome = make_gateway(max_network_retries=0).charge(make_request())

    assert outcome.kind is OutcomeKind.UNKNOWN


def test_a_refused_retry_after_a_timeout_is_still_unknown(gateway, stripe_api, make_request: MakeRequest):
    # given a first try that may have reached Stripe, then retries that could not connect
    stripe_api.answer(httpx.ReadTimeout, httpx.ConnectError, httpx.ConnectError)

    outcome = gateway.charge(make_request())

    # the last error proves nothing about the first try: a new attempt could charge twice
    assert outcome.kind is OutcomeKind.UNKNOWN


def test_a_rate_limit_after_a_500_is_unknown(gateway, stripe_api, make_request: MakeRequest):
    stripe_api.answer("api_error_500", "rate_limit")

    assert gateway.charge(make_request()).kind is OutcomeKind.UNKNOWN


def test_a_timeout_then_success_is_succeeded_under_one_key(gateway, stripe_api, make_request: MakeRequest):
    stripe_api.answer(httpx.ReadTimeout, "payment_intent_succeeded")
    request = make_request()

    assert gateway.charge(request).kind is OutcomeKind.SUCCEEDED
    assert {sent.headers["Idempotency-Key"] for sent in stripe_api.requests} == {request.idempotency_key}


def test_charge_many_keeps_the_input_order(gateway, stripe_api, make_request: MakeRequest):
    stripe_api.answer(*["payment_intent_succeeded"] * 20)
    requests = [make_request(amount=Decimal(i + 1)) for i in range(20)]

    outcomes = gateway.charge_many(requests)

    assert [o.kind for o in outcomes] == [OutcomeKind.SUCCEEDED] * 20
    sent_amounts = sorted(int(parse_qs(r.content.decode())["amount"][0]) for r in stripe_api.requests)
    assert sent_amounts == [(i + 1) * 100 for i in range(20)]


# --- find_charge ---------------------------------------------------------------------------------------


def test_find_charge_searches_by_the_key_in_metadata(gateway, stripe_api):
    stripe_api.answer("search_found")

    record = gateway.find_charge("pay_0190f2c4:1")

    [sent] = stripe_api.requests
    assert sent.method == "GET"
    assert sent.url.path == "/v1/payment_intents/search"
    assert sent.url.params["query"] == "metadata['idempotency_key']:'pay_0190f2c4:1'"
    assert record is not None
    assert record.reference == "pi_3QdR8yLkdIwHu7ix0a1b2c3d"
    assert record.status == "succeeded"
    assert record.amount == Decimal("125.50")
    assert record.currency == "EUR"
    assert record.payment_id == "0190f2c4-7a1e-7c3b-9f5e-2d8c4b6a1e90"


def test_find_charge_reports_a_declined_payment_intent(gateway, stripe_api):
    stripe_api.answer("search_found_declined")

    record = gateway.find_charge("pay_0190f2c4:1")

    assert record is not None
    assert record.status == "declined"
    assert record.failure_code == "insufficient_funds"


def test_find_charge_escapes_quotes_in_the_key(gateway, stripe_api):
    stripe_api.answer("search_empty")

    gateway.find_charge("it's\\odd")

    assert stripe_api.requests[0].url.params["query"] == "metadata['idempotency_key']:'it\\'s\\\\odd'"


def test_find_charge_returns_none_when_search_shows_nothing(gateway, stripe_api):
    # Search is eventually consistent: None is "not visible yet", and the caller re-sends the same key
    stripe_api.answer("search_empty")

    assert gateway.find_charge("pay_0190f2c4:1") is None


def test_a_resend_under_the_same_key_gets_the_stored_result(gateway, stripe_api, make_request: MakeRequest):
    # given a charge whose answer was lost, and a search that does not show it yet
    request = make_request()
    stripe_api.answer(httpx.ReadTimeout, httpx.ReadTimeout, httpx.ReadTimeout, "search_empty")
    assert gateway.charge(request).kind is OutcomeKind.UNKNOWN
    assert gateway.find_charge(request.idempotency_key) is None

    # when the reconciler re-sends the same request (Stripe replays the stored PaymentIntent)
    stripe_api.answer("payment_intent_succeeded")
    outcome = gateway.charge(request)

    # then the outcome is settled, and every charge request carried the one key
    assert outcome.kind is OutcomeKind.SUCCEEDED
    posts = [sent for sent in stripe_api.requests if sent.method == "POST"]
    assert {sent.headers["Idempotency-Key"] for sent in posts} == {request.idempotency_key}


def test_find_charge_reports_a_payment_intent_still_processing(gateway, stripe_api):
    stripe_api.answer("search_found_processing")

    record = gateway.find_charge("pay_0190f2c4:1")

    # found, and still processing: the engine polls it on its own schedule (not a failed lookup)
    assert record is not None
    assert record.status == "processing"


def test_find_charge_raises_when_stripe_cannot_answer(make_gateway, stripe_api):
    stripe_api.answer("api_error_500")

    with pytest.raises(GatewayLookupError):
        make_gateway(max_network_retries=0).find_charge("pay_0190f2c4:1")


def test_it_refuses_to_start_without_an_api_key(settings):
    settings.STRIPE_API_KEY = ""

    with pytest.raises(ImproperlyConfigured):
        StripeGateway()
