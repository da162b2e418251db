"""classification.py, table by table: every raw result and the outcome it must become."""

from __future__ import annotations

import email.utils
import time
from decimal import Decimal
from typing import Any

import httpx
import pytest
import stripe

from payments.gateways import classification as c
from payments.gateways.base import ChargeRequest, OutcomeKind

SUCCEEDED, DECLINED, RETRYABLE, UNKNOWN = (
    OutcomeKind.SUCCEEDED,
    OutcomeKind.DECLINED,
    OutcomeKind.RETRYABLE,
    OutcomeKind.UNKNOWN,
)

# --- amounts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency", "minor", "text"),
    [
        ("125.50", "EUR", 12550, "125.50"),
        ("125.5", "EUR", 12550, "125.50"),
        ("0.01", "USD", 1, "0.01"),
        ("500", "JPY", 500, "500"),
        ("500.00", "JPY", 500, "500"),
        ("1E+2", "JPY", 100, "100"),
        ("1.234", "BHD", 1234, "1.234"),
        ("1.2", "BHD", 1200, "1.200"),
        ("999999.999", "KWD", 999999999, "999999.999"),
    ],
)
def test_it_converts_amounts_exactly(amount, currency, minor, text):
    assert c.minor_units(Decimal(amount), currency) == minor
    assert c.major_units_text(Decimal(amount), currency) == text


@pytest.mark.parametrize(
    ("amount", "currency", "message"),
    [
        ("1.005", "EUR", "more decimals"),
        ("0.5", "JPY", "more decimals"),
        ("1.2345", "BHD", "more decimals"),
        ("0", "EUR", "greater than zero"),
        ("-1.00", "EUR", "greater than zero"),
        ("NaN", "EUR", "finite"),
        ("Infinity", "EUR", "finite"),
        ("1.00", "XXX", "unsupported currency"),
        ("1.00", "eur", "unsupported currency"),
    ],
)
def test_it_refuses_amounts_it_would_have_to_round_or_guess(amount, currency, message):
    with pytest.raises(ValueError, match=message):
        c.minor_units(Decimal(amount), currency)


def _request(**overrides: Any) -> ChargeRequest:
    values: dict[str, Any] = {
        "payment_id": "p1",
        "idempotency_key": "k1",
        "amount": Decimal("1.00"),
        "currency": "EUR",
        "payment_method": "pm_card_visa",
    }
    return ChargeRequest(**(values | overrides))


@pytest.mark.parametrize(
    "overrides",
    [
        {"amount": Decimal("1.001")},
        {"currency": "XXX"},
        {"amount": Decimal("0")},
        {"idempotency_key": ""},
        {"payment_method": ""},
    ],
)
def test_preflight_rejects_a_request_no_gateway_could_accept(overrides):
    outcome = c.preflight(_request(**overrides))

    assert outcome is not None
    assert outcome.kind is DECLINED
    assert outcome.failure_code == "gateway_rejected"
    assert outcome.needs_operator
    assert outcome.detail.startswith("not sent")


def test_preflight_lets_a_valid_request_through():
    assert c.preflight(_request()) is None


# --- transport errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        # never sent: safe to retry under a new attempt
        (httpx.ConnectError("refused"), RETRYABLE),
        (httpx.ConnectTimeout("slow connect"), RETRYABLE),
        (httpx.PoolTimeout("no connection free"), RETRYABLE),
        # sent (or partly sent): the gateway may have charged
        (httpx.ReadTimeout("no answer"), UNKNOWN),
        (httpx.WriteTimeout("slow send"), UNKNOWN),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), UNKNOWN),
        (httpx.ReadError("reset"), UNKNOWN),
        (httpx.WriteError("broken pipe"), UNKNOWN),
        # anything unforeseen is a maybe
        (httpx.LocalProtocolError("bad header"), UNKNOWN),
        (httpx.ProxyError("proxy"), UNKNOWN),
        (httpx.DecodingError("bad gzip"), UNKNOWN),
        (httpx.TimeoutException("some timeout"), UNKNOWN),
        (httpx.NetworkError("some network error"), UNKNOWN),
        (RuntimeError("bug"), UNKNOWN),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
def test_transport_errors(exc, kind):
    outcome = c.classify_transport_error(exc)

    assert outcome.kind is kind
    assert c.never_sent(exc) is (kind is RETRYABLE)
    assert type(exc).__name__ in outcome.detail
    assert outcome.reference == ""
    assert not outcome.needs_operator


# --- HTTP answers (sandbox) ----------------------------------------------------------------------------------

SUCCEEDED_BODY = {"id": "ch_1", "status": "succeeded", "amount": "1.00", "currency": "EUR"}
DECLINED_BODY = {"id": "ch_2", "status": "declined", "failure_code": "card_declined", "failure_message": "x"}


def _problem(code: str) -> dict[str, Any]:
    return {"type": "about:blank", "title": "t", "status": 0, "detail": "d", "code": code}


@pytest.mark.parametrize(
    ("status", "body", "kind", "failure_code", "needs_operator"),
    [
        (201, SUCCEEDED_BODY, SUCCEEDED, "", False),
        (200, SUCCEEDED_BODY, SUCCEEDED, "", False),  # a replayed key
        (201, DECLINED_BODY, DECLINED, "card_declined", False),
        (200, DECLINED_BODY, DECLINED, "card_declined", False),
        (201, {**DECLINED_BODY, "failure_code": "insufficient_funds"}, DECLINED, "insufficient_funds", False),
        (201, {**DECLINED_BODY, "failure_code": "stolen_card"}, DECLINED, "card_declined", False),
        (201, {**DECLINED_BODY, "failure_code": None}, DECLINED, "card_declined", False),
        # a 2xx we cannot read may still be a charge
        (201, {"status": "succeeded"}, UNKNOWN, "", False),
        (201, {"id": "ch_3", "status": "pending"}, UNKNOWN, "", False),
        (201, None, UNKNOWN, "", False),
        (204, None, UNKNOWN, "", False),
        # refused before processing
        (429, _problem("rate_limited"), RETRYABLE, "", False),
        (503, _problem("gateway_unavailable"), RETRYABLE, "", False),
        (503, None, RETRYABLE, "", False),
        # our request was wrong: terminal, and a person must look
        (400, _problem("invalid_amount"), DECLINED, "gateway_rejected", True),
        (400, _problem("idempotency_key_required"), DECLINED, "gateway_rejected", True),
        (401, None, DECLINED, "gateway_rejected", True),
        (403, None, DECLINED, "gateway_rejected", True),
        (404, _problem("not_found"), DECLINED, "gateway_rejected", True),
        (405, _problem("method_not_allowed"), DECLINED, "gateway_rejected", True),
        (413, _problem("request_too_large"), DECLINED, "gateway_rejected", True),
        (422, _problem("invalid_metadata"), DECLINED, "gateway_rejected", True),
        # the key already names another request: may be charged, never retry under a new key
        (422, _problem("idempotency_key_reused"), UNKNOWN, "", True),
        # may have been processed
        (408, None, UNKNOWN, "", False),
        (409, _problem("idempotency_key_in_use"), UNKNOWN, "", False),
        (500, _problem("internal_error"), UNKNOWN, "", False),
        (502, None, UNKNOWN, "", False),
        (504, _problem("gateway_timeout"), UNKNOWN, "", False),
        (599, None, UNKNOWN, "", False),
        (301, None, UNKNOWN, "", False),
        (100, None, UNKNOWN, "", False),
    ],
)
def test_http_answers(status, body, kind, failure_code, needs_operator):
    outcome = c.classify_http_response(status, body, {})

    assert outcome.kind is kind
    assert outcome.failure_code == failure_code
    assert outcome.needs_operator is needs_operator
    if kind in (DECLINED,):
        assert outcome.failure_message  # always something safe to show
    if kind is SUCCEEDED:
        assert outcome.reference == body["id"]


def test_a_decline_keeps_the_charge_reference_and_the_raw_code_for_operators():
    outcome = c.classify_http_response(201, {**DECLINED_BODY, "failure_code": "stolen_card"}, {})

    assert outcome.reference == "ch_2"
    assert outcome.failure_message == "The payment method was declined."
    assert "stolen_card" in outcome.detail


@pytest.mark.parametrize(("status", "expected"), [(429, 7.0), (503, 7.0), (500, None), (400, None)])
def test_retry_after_is_kept_only_for_retryable_answers(status, expected):
    assert c.classify_http_response(status, None, {"Retry-After": "7"}).retry_after_seconds == expected


NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("", None),
        ("  ", None),
        ("2", 2.0),
        ("1.5", 1.5),
        (" 30 ", 30.0),
        ("0", 0.0),
        ("-5", 0.0),
        ("86400", c.MAX_RETRY_AFTER_SECONDS),
        ("soon", None),
        ("nan", None),
        ("inf", None),
        (email.utils.formatdate(NOW + 120, usegmt=True), 120.0),
        (email.utils.formatdate(NOW - 120, usegmt=True), 0.0),
        ("Wed, 21 Oct 2015 07:28:00 -0000", None),  # no zone: refuse to guess
    ],
)
def test_retry_after_parsing(value, seconds):
    assert c.parse_retry_after(value, now=NOW) == seconds


def test_retry_after_dates_count_from_now():
    in_a_minute = email.utils.formatdate(time.time() + 60, usegmt=True)

    parsed = c.parse_retry_after(in_a_minute)

    assert parsed is not None
    assert 55 <= parsed <= 60


# --- declines -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("codes", "public_code"),
    [
        (("insufficient_funds", "card_declined"), "insufficient_funds"),
        ((None, "card_declined"), "card_declined"),
        (("fraudulent", "card_declined"), "card_declined"),
        (("lost_card", "card_declined"), "card_declined"),
        (("pickup_card",), "card_declined"),
        (("expired_card",), "expired_card"),
        (("incorrect_cvc",), "incorrect_cvc"),
        (("authentication_required",), "authentication_required"),
        (("currency_not_supported",), "currency_not_supported"),
        (("something_new",), "card_declined"),
        ((), "card_declined"),
    ],
)
def test_decline_codes_map_to_our_stable_codes(codes, public_code):
    outcome = c.decline_outcome(*codes, reference="ch_1")

    assert outcome.kind is DECLINED
    assert outcome.failure_code == public_code
    assert outcome.failure_message == c.DECLINE_MESSAGES[public_code][1]
    assert outcome.reference == "ch_1"


def test_every_decline_message_is_safe_to_show():
    for public_code, message in c.DECLINE_MESSAGES.values():
        assert public_code
        assert message.endswith(".")
        assert "fraud" not in message.lower()
        assert "stolen" not in message.lower()


# --- Stripe PaymentIntents -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_code", "decline_code", "kind", "failure_code", "needs_operator"),
    [
        ("succeeded", None, None, SUCCEEDED, "", False),
        ("requires_action", None, None, DECLINED, "authentication_required", False),
        ("requires_payment_method", "card_declined", "insufficient_funds", DECLINED, "insufficient_funds", False),
        ("requires_payment_method", "expired_card", None, DECLINED, "expired_card", False),
        ("requires_payment_method", None, None, DECLINED, "card_declined", False),
        ("processing", None, None, UNKNOWN, "", False),
        ("requires_capture", None, None, UNKNOWN, "", True),
        ("requires_confirmation", None, None, UNKNOWN, "", True),
        ("canceled", None, None, DECLINED, "gateway_rejected", True),
        ("a_status_from_the_future", None, None, UNKNOWN, "", True),
    ],
)
def test_payment_intent_statuses(status, error_code, decline_code, kind, failure_code, needs_operator):
    outcome = c.classify_payment_intent("pi_1", status, error_code=error_code, decline_code=decline_code)

    assert outcome.kind is kind
    assert outcome.failure_code == failure_code
    assert outcome.needs_operator is needs_operator
    assert outcome.reference == "pi_1"


# --- Stripe errors -------------------------------------------------------------------------------------------


def _card_error(code: str, decline_code: str | None = None) -> stripe.CardError:
    error: dict[str, Any] = {"type": "card_error", "code": code, "message": "Your card was declined."}
    if decline_code:
        error["decline_code"] = decline_code
    error["payment_intent"] = {"id": "pi_9", "object": "payment_intent", "status": "requires_payment_method"}
    return stripe.CardError(error["message"], None, code, None, 402, {"error": error}, {"request-id": "req_1"})


def _error(cls: type[stripe.StripeError], status: int | None, **kwargs: Any) -> stripe.StripeError:
    return cls("message that may quote pm_secret", http_status=status, json_body={"error": {}}, **kwargs)


STRIPE_CASES: list[tuple[str, stripe.StripeError, OutcomeKind, str, bool]] = [
    ("card declined", _card_error("card_declined", "insufficient_funds"), DECLINED, "insufficient_funds", False),
    ("card fraud", _card_error("card_declined", "fraudulent"), DECLINED, "card_declined", False),
    ("expired", _card_error("expired_card"), DECLINED, "expired_card", False),
    (
        "3ds",
        _card_error("authentication_required", "authentication_required"),
        DECLINED,
        "authentication_required",
        False,
    ),
    ("processing error", _card_error("processing_error"), RETRYABLE, "", False),
    ("try again later", _card_error("card_declined", "try_again_later"), RETRYABLE, "", False),
    ("rate limit", _error(stripe.RateLimitError, 429), RETRYABLE, "", False),
    ("idempotency", _error(stripe.IdempotencyError, 400), UNKNOWN, "", True),
    ("authentication", _error(stripe.AuthenticationError, 401), DECLINED, "gateway_rejected", True),
    ("permission", _error(stripe.PermissionError, 403), DECLINED, "gateway_rejected", True),
    (
        "invalid request",
        stripe.InvalidRequestError(
            "No such PaymentMethod: 'pm_secret'", "payment_method", "resource_missing", None, 400
        ),
        DECLINED,
        "gateway_rejected",
        True,
    ),
    ("connection", stripe.APIConnectionError("network"), UNKNOWN, "", False),
    ("500", _error(stripe.APIError, 500), UNKNOWN, "", False),
    ("409", _error(stripe.APIError, 409), UNKNOWN, "", False),
    ("other", _error(stripe.StripeError, None), UNKNOWN, "", True),
]


@pytest.mark.parametrize(
    ("exc", "kind", "failure_code", "needs_operator"),
    [case[1:] for case in STRIPE_CASES],
    ids=[case[0] for case in STRIPE_CASES],
)
def test_stripe_errors(exc, kind, failure_code, needs_operator):
    outcome = c.classify_stripe_error(exc)

    assert outcome.kind is kind
    assert outcome.failure_code == failure_code
    assert outcome.needs_operator is needs_operator
    assert "pm_secret" not in outcome.detail  # never the provider's raw message
    assert type(exc).__name__ in outcome.detail


def test_a_card_error_keeps_the_payment_intent_id():
    outcome = c.classify_stripe_error(_card_error("card_declined", "insufficient_funds"))

    assert outcome.reference == "pi_9"
    assert "req_1" in outcome.detail


@pytest.mark.parametrize(
    ("exc", "never_sent", "earlier_try_may_have_charged", "kind"),
    [
        (stripe.APIConnectionError("refused"), True, False, RETRYABLE),
        (stripe.APIConnectionError("refused"), True, True, UNKNOWN),
        (stripe.APIConnectionError("timeout"), False, False, UNKNOWN),
        (_error(stripe.RateLimitError, 429), False, False, RETRYABLE),
        (_error(stripe.RateLimitError, 429), False, True, UNKNOWN),
        # a card error is the stored answer for the key itself: earlier tries do not change it
        (_card_error("card_declined"), False, True, DECLINED),
        # never_sent only ever upgrades a connection error
        (_error(stripe.APIError, 500), True, False, UNKNOWN),
        # "our request was refused" proves nothing was charged only when no earlier try may have been processed
        (_error(stripe.InvalidRequestError, 400, param="amount"), False, False, DECLINED),
        (_error(stripe.InvalidRequestError, 400, param="amount"), False, True, UNKNOWN),
        (_error(stripe.AuthenticationError, 401), False, True, UNKNOWN),
    ],
)
def test_stripe_retry_history_decides_retryable_or_unknown(exc, never_sent, earlier_try_may_have_charged, kind):
    outcome = c.classify_stripe_error(
        exc, connection_never_sent=never_sent, earlier_try_may_have_charged=earlier_try_may_have_charged
    )

    assert outcome.kind is kind


def test_a_rate_limit_keeps_its_retry_after():
    exc = stripe.RateLimitError("slow down", None, 429, {"error": {}}, {"Retry-After": "3"})

    assert c.classify_stripe_error(exc).retry_after_seconds == 3.0


# --- the tables themselves --------------------------------------------------------------------------------------


def test_only_proven_not_sent_transport_errors_are_retryable():
    retryable = {exc_type for exc_type, rule in c.TRANSPORT_ERROR_RULES if rule.kind is RETRYABLE}

    assert retryable == {httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout}


def test_only_429_and_503_are_retryable_statuses():
    retryable = {status for status in range(100, 600) if c.http_status_rule(status).kind is RETRYABLE}

    assert retryable == {429, 503}


def test_unexpected_errors_are_unknown_and_page_an_operator():
    try:
        raise KeyError("pm_secret")
    except KeyError as exc:
        outcome = c.unexpected_error_outcome(exc)

    assert outcome.kind is UNKNOWN
    assert outcome.needs_operator
    assert "KeyError" in outcome.detail
    assert "test_classification.py" in outcome.detail
    assert "pm_secret" not in outcome.detail
