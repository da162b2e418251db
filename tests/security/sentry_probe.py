"""Run as a separate process by test_sentry_scrubbing.py: Sentry patches global state once
installed, so the probe keeps it out of the test process.

Initialises Sentry exactly as production does (``config.sentry.init_sentry``) with a
transport that keeps envelopes in memory, reports an exception and an error log line
full of sensitive values, and prints every serialized envelope to stdout.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
django.setup()

import sentry_sdk  # noqa: E402
from sentry_sdk.envelope import Envelope  # noqa: E402
from sentry_sdk.transport import Transport  # noqa: E402

from config.sentry import init_sentry  # noqa: E402
from tests.security.conftest import BEARER, IBAN, PAN, PAYEE_NAME, PAYMENT_METHOD  # noqa: E402

captured: list[bytes] = []


class CapturingTransport(Transport):
    def capture_envelope(self, envelope: Envelope) -> None:
        captured.append(envelope.serialize())


def charge(payee_name: str, card: str, authorization: str, account: str) -> None:
    request_body = {"payee": {"name": payee_name, "account": account}, "payment_method": PAYMENT_METHOD}
    raise RuntimeError(f"gateway rejected card {card} for {account} (auth {authorization}) body={len(request_body)}")


def main() -> None:
    init_sentry(
        "https://public@sentry.example.com/1", environment="test", release="probe", transport=CapturingTransport
    )
    sentry_sdk.add_breadcrumb(category="http", message=f"POST with {BEARER}", data={"authorization": BEARER})
    try:
        charge(PAYEE_NAME, PAN, BEARER, IBAN)
    except RuntimeError:
        sentry_sdk.capture_exception()
    extra: dict[str, Any] = {"payee_name": PAYEE_NAME, "note": f"card {PAN}"}
    logging.getLogger("payments.probe").error("charge failed for %s via %s", PAN, PAYMENT_METHOD, extra=extra)
    sentry_sdk.flush()
    for envelope in captured:
        sys.stdout.write(envelope.decode("utf-8", "replace") + "\n")


if __name__ == "__main__":
    main()
