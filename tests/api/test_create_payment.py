"""POST /api/v1/payments: the happy path, the payment object, and every validation code."""

from __future__ import annotations

import json
import logging

import pytest

from payments.models import IdempotencyRecord, Payment, PaymentEvent

from .conftest import (
    DROP,
    PANS,
    PAYMENT_KEYS,
    PAYMENTS_URL,
    all_table_text,
    assert_problem,
    create,
    error_codes,
    new_key,
    payment_body,
)

pytestmark = pytest.mark.django_db


def test_it_schedules_a_payment_and_answers_201_with_the_payment_and_a_location(api, owner):
    # given a valid body
    # when it is posted
    response = create(api)

    # then the payment object of the contract comes back
    assert response.status_code == 201, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == PAYMENT_KEYS
    assert body["status"] == "scheduled"
    assert body["amount"] == "125.50"
    assert body["currency"] == "EUR"
    assert body["payee"] == {"name": "ACME Utilities", "account_last4": "4321"}
    assert body["description"] == "March rent"
    assert body["scheduled_for"] == "2027-03-14T07:30:00Z"
    assert body["time_zone"] == "UTC"
    assert body["scheduled_local"] == "2027-03-14T07:30:00+00:00"
    assert body["created_at"].endswith("Z")
    assert body["updated_at"].endswith("Z")
    assert body["executed_at"] is None
    assert body["canceled_at"] is None
    assert body["attempts"] == 0
    assert body["failure"] is None
    assert body["gateway_reference"] is None
    assert body["metadata"] == {"invoice": "2027-03"}
    # and the Location header points at it
    assert response["Location"] == f"http://testserver{PAYMENTS_URL}/{body['id']}"
    assert api.get(response["Location"]).json() == body
    # and it is stored with exact minor units, owned by the caller
    payment = Payment.objects.get(pk=body["id"])
    assert payment.owner == owner
    assert payment.amount_minor == 12550
    assert payment.payee_account == "DE21370400440532014321"


def test_it_never_returns_the_payee_account_or_the_payment_method(api):
    # given a payment
    response = create(api, payment_body(payment_method="pm_secret_token_value"))

    # when it is read back, listed, and its timeline read
    payment_id = response.json()["id"]
    texts = [
        response.content,
        api.get(f"{PAYMENTS_URL}/{payment_id}").content,
        api.get(PAYMENTS_URL).content,
        api.get(f"{PAYMENTS_URL}/{payment_id}/events").content,
    ]

    # then neither the full account nor the token is ever in a response
    for text in texts:
        assert b"DE21370400440532014321" not in text
        assert b"pm_secret_token_value" not in text


def test_it_records_the_creation_event(api, owner):
    # when a payment is created
    payment_id = create(api).json()["id"]

    # then its timeline starts with one creation event by the user
    (event,) = PaymentEvent.objects.filter(payment_id=payment_id)
    assert (event.from_status, event.to_status, event.reason) == ("", "scheduled", "created")
    assert event.actor == f"user:{owner.pk}"


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        ("500", "JPY", "500"),
        ("1.5", "BHD", "1.500"),
        ("1.005", "BHD", "1.005"),
        ("10", "EUR", "10.00"),
        ("0.01", "USD", "0.01"),
        ("1000000", "EUR", "1000000.00"),
    ],
)
def test_amounts_come_back_as_strings_with_the_currencys_decimals(api, amount, currency, expected):
    # when a payment is created in a currency with 0, 2 or 3 decimals
    response = create(api, payment_body(amount=amount, currency=currency))

    # then the amount is a string with exactly the currency's decimals, never a JSON number
    assert response.status_code == 201, response.content
    assert f'"amount":"{expected}"'.encode() in response.content
    assert json.loads(response.content, parse_float=lambda text: pytest.fail(f"float {text} in JSON"))


@pytest.mark.parametrize(
    ("amount", "currency"),
    [
        pytest.param(125.5, "EUR", id="json-float"),
        pytest.param(125, "EUR", id="json-integer"),
        pytest.param("0", "EUR", id="zero"),
        pytest.param("0.00", "EUR", id="zero-with-decimals"),
        pytest.param("-5.00", "EUR", id="negative"),
        pytest.param("1.5", "JPY", id="decimals-for-jpy"),
        pytest.param("100.0", "JPY", id="trailing-zero-decimal-for-jpy"),
        pytest.param("1.001", "EUR", id="three-decimals-for-eur"),
        pytest.param("1.0001", "BHD", id="four-decimals-for-bhd"),
        pytest.param("1000000.01", "EUR", id="above-the-maximum"),
        pytest.param("abc", "EUR", id="not-a-number"),
        pytest.param("1e3", "EUR", id="exponent"),
        pytest.param(" 1.00", "EUR", id="whitespace"),
        pytest.param("1,00", "EUR", id="decimal-comma"),
        pytest.param("+1.00", "EUR", id="plus-sign"),
        pytest.param(".5", "EUR", id="no-integer-part"),
        pytest.param("5.", "EUR", id="no-fraction-digits"),
        pytest.param("", "EUR", id="empty"),
        pytest.param("NaN", "EUR", id="nan"),
        pytest.param(DROP, "EUR", id="missing"),
        pytest.param(None, "EUR", id="null"),
        pytest.param(True, "EUR", id="boolean"),
    ],
)
def test_it_rejects_an_invalid_amount(api, amount, currency):
    # when the amount breaks a rule of the contract
    response = create(api, payment_body(amount=amount, currency=currency))

    # then 422 invalid_amount on the amount field, and nothing is created
    body = assert_problem(response, 422, "invalid_amount")
    assert error_codes(body) == [("amount", "invalid_amount")]
    assert not Payment.objects.exists()
    assert not IdempotencyRecord.objects.exists()


def test_it_accepts_an_amount_at_the_configured_maximum_and_rejects_one_above(api, settings):
    # given a lower maximum
    settings.PAYMENTS_MAX_AMOUNT = "500"

    # then 500 is fine and 500.01 is not
    assert create(api, payment_body(amount="500.00")).status_code == 201
    assert_problem(create(api, payment_body(amount="500.01")), 422, "invalid_amount")


@pytest.mark.parametrize("currency", ["XYZ", "eur", "EURO", "", 978, None, DROP])
def test_it_rejects_an_unsupported_currency(api, currency):
    response = create(api, payment_body(currency=currency))
    body = assert_problem(response, 422, "unsupported_currency")
    assert error_codes(body) == [("currency", "unsupported_currency")]


@pytest.mark.parametrize(
    "payment_method",
    ["tok_visa", "pm_", "pm_ab", "", "pm_card visa", "PM_card_visa", "pm_card_visa\n", 42, None, DROP, {"pm": "x"}],
)
def test_it_rejects_an_invalid_payment_method(api, payment_method):
    response = create(api, payment_body(payment_method=payment_method))
    body = assert_problem(response, 422, "invalid_payment_method")
    assert error_codes(body) == [("payment_method", "invalid_payment_method")]


def test_it_accepts_a_decline_test_token(api):
    assert create(api, payment_body(payment_method="pm_card_decline")).status_code == 201


@pytest.mark.parametrize(
    ("payee", "field"),
    [
        (DROP, "payee"),
        (None, "payee"),
        ("ACME", "payee"),
        ({"name": "ACME"}, "payee.account"),
        ({"account": "DE21370400440532014321"}, "payee.name"),
        ({"name": "", "account": "123"}, "payee.name"),
        ({"name": "   ", "account": "123"}, "payee.name"),
        ({"name": "x" * 141, "account": "123"}, "payee.name"),
        ({"name": "ACME", "account": "1" * 65}, "payee.account"),
        ({"name": 7, "account": "123"}, "payee.name"),
        ({"name": "AC\x00ME", "account": "123"}, "payee.name"),
        ({"name": "ACME", "account": "123", "iban": "x"}, "payee.iban"),
    ],
)
def test_it_rejects_an_invalid_payee(api, payee, field):
    response = create(api, payment_body(payee=payee))
    body = assert_problem(response, 422, "invalid_payee")
    assert (field, "invalid_payee") in error_codes(body)


def test_it_accepts_payee_fields_at_their_maximum_length(api):
    response = create(api, payment_body(payee={"name": "n" * 140, "account": "a" * 64}))
    assert response.status_code == 201
    assert response.json()["payee"] == {"name": "n" * 140, "account_last4": "aaaa"}


@pytest.mark.parametrize("description", ["x" * 141, 5, ["a"], "bell\x07"])
def test_it_rejects_an_invalid_description(api, description):
    response = create(api, payment_body(description=description))
    body = assert_problem(response, 422, "invalid_description")
    assert error_codes(body) == [("description", "invalid_description")]


def test_description_is_optional_and_may_be_140_characters(api):
    assert create(api, payment_body(description=DROP)).json()["description"] == ""
    assert create(api, payment_body(description="d" * 140)).json()["description"] == "d" * 140


@pytest.mark.parametrize(
    "metadata",
    [
        ["a"],
        "a=b",
        {f"k{i}": "v" for i in range(21)},
        {"k" * 41: "v"},
        {"": "v"},
        {"k": "v" * 501},
        {"k": {"nested": "v"}},
        {"k": 5},
        {"k": None},
        {"k": True},
    ],
)
def test_it_rejects_invalid_metadata(api, metadata):
    response = create(api, payment_body(metadata=metadata))
    body = assert_problem(response, 422, "invalid_metadata")
    assert all(code == "invalid_metadata" for _, code in error_codes(body))


def test_metadata_may_have_20_keys_of_40_characters_with_500_character_values(api):
    metadata = {f"{i:02d}".ljust(40, "k"): "v" * 500 for i in range(20)}
    assert create(api, payment_body(metadata=metadata)).json()["metadata"] == metadata


def test_it_rejects_unknown_fields_such_as_server_controlled_ones(api):
    # when a client tries to set the status
    response = create(api, payment_body(status="succeeded", attempts=0))

    # then 422 unknown_field names both fields, and nothing is created
    body = assert_problem(response, 422, "unknown_field")
    assert error_codes(body) == [("status", "unknown_field"), ("attempts", "unknown_field")]
    assert not Payment.objects.exists()


def test_it_reports_every_problem_with_the_first_ones_code_on_top(api):
    # when several fields are wrong at once
    response = create(
        api, payment_body(amount=12.5, currency="XXX", payee={"name": ""}, scheduled_for="soon", metadata=[])
    )

    # then each is listed, in the body's documented order, and the first one's code is the problem's code
    body = assert_problem(response, 422, "invalid_amount")
    assert error_codes(body) == [
        ("amount", "invalid_amount"),
        ("currency", "unsupported_currency"),
        ("payee.name", "invalid_payee"),
        ("payee.account", "invalid_payee"),
        ("scheduled_for", "invalid_scheduled_for"),
        ("metadata", "invalid_metadata"),
    ]
    assert all(error["message"] for error in body["errors"])


def test_it_answers_malformed_json_with_400_and_keeps_nothing(api):
    # when the body is not JSON
    response = api.post(
        PAYMENTS_URL, b'{"amount": "1.00",', content_type="application/json", HTTP_IDEMPOTENCY_KEY=new_key()
    )

    # then 400 malformed_request, and the key is not consumed
    assert_problem(response, 400, "malformed_request")
    assert not IdempotencyRecord.objects.exists()


@pytest.mark.parametrize("raw", [b"[]", b'"text"', b"42", b"null", b'{"amount": NaN}', b"[" * 5000])
def test_it_answers_a_body_that_is_not_a_json_object_with_400(api, raw):
    response = api.post(PAYMENTS_URL, raw, content_type="application/json", HTTP_IDEMPOTENCY_KEY=new_key())
    assert_problem(response, 400, "malformed_request")


def test_it_answers_an_empty_body_with_400(api):
    response = api.post(PAYMENTS_URL, b"", content_type="application/json", HTTP_IDEMPOTENCY_KEY=new_key())
    assert_problem(response, 400, "malformed_request")


def test_it_answers_a_body_nested_too_deeply_with_400(api):
    nested: dict[str, object] = {}
    for _ in range(20):
        nested = {"n": nested}
    response = create(api, payment_body(metadata=nested))
    assert_problem(response, 400, "malformed_request")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
def test_it_answers_another_content_type_with_415(api, content_type):
    raw = json.dumps(payment_body()).encode()
    response = api.post(PAYMENTS_URL, raw, content_type=content_type, HTTP_IDEMPOTENCY_KEY=new_key())
    assert_problem(response, 415, "unsupported_media_type")


def test_it_answers_a_body_without_a_content_type_with_415(api):
    raw = json.dumps(payment_body()).encode()
    response = api.generic("POST", PAYMENTS_URL, raw, content_type="", HTTP_IDEMPOTENCY_KEY=new_key())
    assert_problem(response, 415, "unsupported_media_type")


def test_it_answers_a_body_over_the_size_limit_with_413(api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    response = create(api, payment_body(description="x" * 2000))
    assert_problem(response, 413, "request_too_large")


def test_a_trailing_slash_is_not_found_and_never_redirected(api):
    # when a client adds a trailing slash to a POST
    response = api.post(f"{PAYMENTS_URL}/", payment_body(), format="json", HTTP_IDEMPOTENCY_KEY=new_key())

    # then 404 problem+json: no 301 that would turn the POST into a GET
    assert_problem(response, 404, "not_found")
    assert not Payment.objects.exists()


def test_it_echoes_the_callers_request_id_on_success_and_on_error(api):
    ok = create(api, HTTP_X_REQUEST_ID="req-123")
    bad = create(api, payment_body(amount=1), HTTP_X_REQUEST_ID="req-456")
    assert ok["X-Request-ID"] == "req-123"
    assert assert_problem(bad, 422, "invalid_amount")["request_id"] == "req-456"


# --- Card data ------------------------------------------------------------------


@pytest.mark.parametrize("pan", PANS)
@pytest.mark.parametrize(
    ("where", "field"),
    [
        ("payee_name", "payee.name"),
        ("description", "description"),
        ("metadata", "metadata.note"),
        ("payment_method", "payment_method"),
        ("unknown", "card"),
    ],
)
def test_it_refuses_card_data_anywhere_and_stores_and_logs_nothing(api, caplog, pan, where, field):
    # given a body with a card number in one field
    cases: dict[str, dict[str, object]] = {
        "payee_name": {"payee": {"name": f"John {pan}", "account": "DE21370400440532014321"}},
        "description": {"description": f"card {pan} exp 12/29"},
        "metadata": {"metadata": {"note": pan}},
        "payment_method": {"payment_method": pan},
        "unknown": {"card": pan},
    }
    overrides = cases[where]
    caplog.set_level(logging.DEBUG)

    # when it is posted
    response = create(api, payment_body(**overrides))

    # then 422 card_data_forbidden names the field without quoting it
    body = assert_problem(response, 422, "card_data_forbidden")
    assert error_codes(body) == [(field, "card_data_forbidden")]
    digits = pan.replace(" ", "").replace("-", "")
    for text in (response.content.decode(), caplog.text, all_table_text()):
        assert pan not in text
        assert digits not in text
    # and nothing was stored: no payment, no idempotency record
    assert not Payment.objects.exists()
    assert not IdempotencyRecord.objects.exists()


def test_it_refuses_a_card_number_sent_as_a_json_number(api):
    response = create(api, payment_body(amount=4111111111111111))
    body = assert_problem(response, 422, "card_data_forbidden")
    assert error_codes(body) == [("amount", "card_data_forbidden")]


def test_it_refuses_a_card_number_in_a_field_name_without_echoing_it(api):
    response = create(api, {**payment_body(), "4111111111111111": "x"})
    body = assert_problem(response, 422, "card_data_forbidden")
    assert "4111111111111111" not in response.content.decode()
    assert body["errors"][0]["field"].endswith("1111")


def test_it_accepts_an_iban_as_payee_account(api):
    response = create(api, payment_body(payee={"name": "ACME", "account": "GB82 WEST 1234 5698 7654 32"}))
    assert response.status_code == 201, response.content
    assert response.json()["payee"]["account_last4"] == "5432"
