"""The JSON log stream: one object per line, no card number, token or IBAN in it."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from django.conf import settings
from django.test import Client

from config.logging import scrub_secrets

from .conftest import API_TOKEN, BEARER, IBAN, IBAN_GROUPED, PAN, PAN_COMPACT, PAYMENT_METHOD

SECRETS = [PAN, PAN_COMPACT, API_TOKEN, PAYMENT_METHOD, IBAN, IBAN_GROUPED, "Kq9vXb3N2mZt8"]


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """The configured console handler (filters and formatter from settings.LOGGING), writing to a buffer."""
    handler = next(h for h in logging.getLogger().handlers if h.get_name() == "console")
    assert isinstance(handler, logging.StreamHandler)
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    try:
        yield buffer
    finally:
        handler.setStream(previous)


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked into the log"


def test_settings_put_both_filters_and_the_json_formatter_on_the_handler() -> None:
    config: dict[str, Any] = settings.LOGGING
    console = config["handlers"]["console"]
    assert console["filters"] == ["mask_card_numbers", "scrub_secrets"]
    assert console["formatter"] == "json"


def test_it_writes_json_lines_without_card_numbers_tokens_or_ibans(log_stream: io.StringIO) -> None:
    logger = logging.getLogger("payments.test_security")

    # given log calls carrying secrets in the message, its arguments, extra fields and an exception
    logger.warning("charging card %s with header %s", PAN, BEARER)
    logger.info(
        "payee account %s via %s",
        IBAN_GROUPED,
        PAYMENT_METHOD,
        extra={"payment_method": PAYMENT_METHOD, "account": IBAN, "card": PAN_COMPACT},
    )
    try:
        raise ValueError(f"gateway refused {PAN_COMPACT} for {IBAN} with {BEARER}")
    except ValueError:
        logger.exception("charge failed")
    structlog.get_logger("payments.structured").info("structured", card=PAN, token=API_TOKEN, iban=IBAN)

    # then every line is one JSON object with the standard keys, and nothing secret is in it
    output = log_stream.getvalue()
    assert_clean(output)
    records = lines(log_stream)
    assert len(records) == 4
    for record in records:
        assert {"timestamp", "level", "logger", "event"} <= record.keys()
    assert records[0]["level"] == "warning"
    assert records[0]["logger"] == "payments.test_security"
    assert "**** **** **** 1111" in str(records[0]["event"])
    assert "Bearer [REDACTED]" in str(records[0]["event"])
    assert "[IBAN ****3000]" in str(records[1]["event"])
    assert records[1]["payment_method"] == "pm_[REDACTED]"
    assert "ValueError" in str(records[2]["exception"])


def test_a_request_log_line_carries_the_request_id(log_stream: io.StringIO, db: None) -> None:
    # a 404 is logged by django.request, outside the view, with the request attached
    Client().get("/no-such-page", HTTP_X_REQUEST_ID="req-sec-123")

    records = [r for r in lines(log_stream) if r["logger"] == "django.request"]
    assert records
    assert records[-1]["request_id"] == "req-sec-123"


def test_lines_logged_inside_a_request_carry_its_id(log_stream: io.StringIO) -> None:
    with structlog.contextvars.bound_contextvars(request_id="req-bound-1"):
        logging.getLogger("payments.test_security").info("inside")

    assert lines(log_stream)[-1]["request_id"] == "req-bound-1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.def-ghi", "Authorization: Bearer [REDACTED]"),
        ("token spt_abcDEF123_-x used", "token spt_[REDACTED] used"),
        ("method pm_card_visa", "method pm_[REDACTED]"),
        ("key sk_live_51Habc", "key sk_live_[REDACTED]"),
        ("password=hunter2hunter2 next", "password=[REDACTED] next"),
        ('{"client_secret": "abc"}', '{"client_secret": "[REDACTED]"}'),
        (f"to {IBAN}.", "to [IBAN ****3000]."),
        (f"to {IBAN_GROUPED} today", "to [IBAN ****3000] today"),
        ("to gb82west12345698765432 now", "to [IBAN ****5432] now"),
        # ids that merely look like IBANs in lower case stay readable
        ("request ab12cdef0123456789abcdef01234567", "request ab12cdef0123456789abcdef01234567"),
        ("nothing to see here", "nothing to see here"),
    ],
)
def test_the_scrubber_masks_secrets_and_leaves_ordinary_text(text: str, expected: str) -> None:
    assert scrub_secrets(text) == expected
