"""Sentry: no token, card number, IBAN or payee name leaves the process in an event."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from config.sentry import scrub_breadcrumb, scrub_event

from .conftest import API_TOKEN, BEARER, IBAN, IBAN_GROUPED, PAN, PAN_COMPACT, PAYEE_NAME, PAYMENT_METHOD

ROOT = Path(__file__).resolve().parents[2]
SECRETS = [PAN, PAN_COMPACT, API_TOKEN, PAYMENT_METHOD, IBAN, IBAN_GROUPED, PAYEE_NAME, "Quartermaine"]


def assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} reached Sentry"


def test_events_sent_through_the_transport_hold_no_sensitive_value() -> None:
    # given Sentry initialised as in production, with a transport that records envelopes
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test"}
    env.pop("SENTRY_DSN", None)

    # when an exception and an error log line full of sensitive values are reported
    result = subprocess.run(
        [sys.executable, "-m", "tests.security.sentry_probe"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    # then the events were sent, and none of the values is in them
    assert result.returncode == 0, result.stderr
    envelopes = result.stdout
    assert "RuntimeError" in envelopes
    assert "charge failed for" in envelopes
    assert "**** **** **** 1111" in envelopes  # masked, not dropped
    assert_clean(envelopes)


def test_the_scrubber_drops_request_bodies_cookies_credentials_and_locals() -> None:
    event = {
        "request": {
            "method": "POST",
            "url": "https://api.example.com/api/v1/payments",
            "query_string": f"note={PAN_COMPACT}",
            "headers": {
                "Authorization": BEARER,
                "Cookie": "sessionid=abc",
                "User-Agent": "probe",
                "X-Request-ID": "r1",
            },
            "cookies": {"sessionid": "abc"},
            "data": {"payee": {"name": PAYEE_NAME, "account": IBAN}},
            "env": {"REMOTE_ADDR": "203.0.113.9"},
        },
        "user": {"id": 7, "email": "someone@example.com", "ip_address": "203.0.113.9"},
        "exception": {
            "values": [
                {
                    "type": "RuntimeError",
                    "value": f"card {PAN} account {IBAN_GROUPED} via {PAYMENT_METHOD}",
                    "stacktrace": {"frames": [{"function": "charge", "vars": {"payee_name": PAYEE_NAME}}]},
                }
            ]
        },
        "extra": {"payee_name": PAYEE_NAME, "amount": 4111111111111111, "count": 3},
        "breadcrumbs": {"values": [{"message": f"sent {BEARER}", "data": {"payment_method": PAYMENT_METHOD}}]},
    }

    scrubbed = scrub_event(event, {})

    assert_clean(repr(scrubbed))
    assert "203.0.113.9" not in repr(scrubbed)
    assert scrubbed["request"] == {
        "method": "POST",
        "url": "https://api.example.com/api/v1/payments",
        "query_string": "note=************1111",
        "headers": {"User-Agent": "probe", "X-Request-ID": "r1"},
    }
    assert scrubbed["user"] == {"id": "7"}
    assert "vars" not in scrubbed["exception"]["values"][0]["stacktrace"]["frames"][0]
    assert scrubbed["extra"] == {"payee_name": "[Filtered]", "amount": "************1111", "count": 3}


def test_breadcrumbs_are_scrubbed() -> None:
    crumb = scrub_breadcrumb({"category": "query", "message": f"card {PAN}", "data": {"token": API_TOKEN}}, {})

    assert_clean(repr(crumb))
    assert crumb["data"] == {"token": "[Filtered]"}
