"""Error reporting to Sentry without personal data, card numbers or secrets.

``init_sentry`` is called from the settings (``config/settings/base.py``, Security
section) when ``SENTRY_DSN`` is set; Celery loads the same settings, so web, worker
and beat are all covered by that one call.

Defence in depth, outermost first:

* ``send_default_pii=False``: no cookies, user details or client IP from the integrations.
* ``include_local_variables=False`` and ``max_request_body_size="never"``: frame
  locals (where payee names and accounts live) and request bodies are never collected.
* ``before_send`` / ``before_send_transaction`` / ``before_breadcrumb`` walk the
  whole payload: frame ``vars`` and cookies are dropped; request headers are
  reduced to an allow-list (no ``Authorization``, no ``Cookie``); request ``data``
  and ``env`` are dropped; values under names such as ``authorization``,
  ``password``, ``payee_name``, ``payment_method`` or ``metadata`` become
  ``[Filtered]``; every remaining string has card numbers masked and bearer/API/
  payment-method tokens, secret pairs and IBAN-like strings scrubbed
  (``config.logging.scrub_text``); numbers that are card numbers are masked too.

What no scrubber can do is recognise a person's name inside free text: code must
not put personal values into exception messages or log lines (use ids).
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import sentry_sdk
from sentry_sdk.integrations.celery import CeleryIntegration
from sentry_sdk.integrations.django import DjangoIntegration
from sentry_sdk.scrubber import DEFAULT_DENYLIST, EventScrubber

from common.card_data import mask_card_numbers, may_contain_card_number

from .logging import scrub_text

__all__ = ["init_sentry", "scrub_breadcrumb", "scrub_event"]

FILTERED = "[Filtered]"

# Values under these names (any case, "-" or "_") are replaced wholesale.
SENSITIVE_KEYS = frozenset(
    {
        # credentials
        "authorization",
        "proxy_authorization",
        "cookie",
        "set_cookie",
        "x_api_key",
        "password",
        "passwd",
        "secret",
        "secret_key",
        "token",
        "api_key",
        "apikey",
        "access_token",
        "refresh_token",
        "client_secret",
        "sessionid",
        "csrftoken",
        "csrfmiddlewaretoken",
        "otp_token",
        "stripe_api_key",
        "field_encryption_keys",
        # personal and payment data (payments.models' Sensitive fields and their API names)
        "payee",
        "payee_name",
        "payee_account",
        "payment_method",
        "description",
        "metadata",
        "response_body",
        "iban",
        "account_number",
        "card",
        "card_number",
        "pan",
        "cvc",
        "cvv",
    }
)
# Removed entirely: frame locals, and cookies wherever they appear.
DROPPED_KEYS = frozenset({"vars", "cookies"})
# The request headers worth keeping; everything else (Authorization, Cookie, X-Forwarded-For, ...) goes.
HEADER_ALLOWLIST = frozenset({"accept", "content_type", "content_length", "host", "user_agent", "x_request_id"})
_MAX_DEPTH = 64


def _normalise(key: str) -> str:
    return key.lower().replace("-", "_")


def _scrub(value: Any, depth: int = 0, *, in_spans: bool = False) -> Any:
    if isinstance(value, str):
        return scrub_text(value)
    if value is None or isinstance(value, bool | datetime.date | datetime.time | datetime.timedelta | uuid.UUID):
        return value  # the SDK serialises these itself (breadcrumb timestamps are datetimes)
    if isinstance(value, int | float):
        digits = str(value)
        return mask_card_numbers(digits) if may_contain_card_number(digits) else value
    if depth >= _MAX_DEPTH:
        return FILTERED
    if isinstance(value, dict):
        scrubbed: dict[Any, Any] = {}
        for key, item in value.items():
            name = _normalise(str(key))
            if name in DROPPED_KEYS:
                continue
            # A span's "description" is its SQL statement or URL, not a payment description.
            if name in SENSITIVE_KEYS and not (in_spans and name == "description"):
                scrubbed[scrub_text(str(key))] = FILTERED
                continue
            scrubbed[scrub_text(key) if isinstance(key, str) else key] = _scrub(
                item, depth + 1, in_spans=in_spans or name == "spans"
            )
        return scrubbed
    if isinstance(value, list | tuple):
        return [_scrub(item, depth + 1, in_spans=in_spans) for item in value]
    return scrub_text(repr(value))


def _scrub_request(request: Any) -> Any:
    if not isinstance(request, dict):
        return None
    kept: dict[str, Any] = {}
    for key in ("method", "url", "query_string"):
        if key in request:
            kept[key] = request[key]
    headers = request.get("headers")
    if isinstance(headers, dict):
        kept["headers"] = {name: value for name, value in headers.items() if _normalise(str(name)) in HEADER_ALLOWLIST}
    # "data" (the body), "cookies" and "env" (REMOTE_ADDR and friends) are dropped.
    return _scrub(kept)


def scrub_event(event: Any, hint: Any = None) -> Any:
    """``before_send`` / ``before_send_transaction``: the event without personal data or secrets."""
    if not isinstance(event, dict):
        return event
    request = event.pop("request", None)
    user = event.pop("user", None)
    scrubbed = _scrub(event)
    if request is not None:
        scrubbed["request"] = _scrub_request(request)
    if isinstance(user, dict) and user.get("id") is not None:
        scrubbed["user"] = {"id": str(user["id"])}
    return scrubbed


def scrub_breadcrumb(crumb: Any, hint: Any = None) -> Any:
    """``before_breadcrumb``: log messages, SQL and HTTP breadcrumbs, scrubbed the same way."""
    return _scrub(crumb) if isinstance(crumb, dict) else crumb


def init_sentry(dsn: str, environment: str, release: str | None = None, **options: Any) -> None:
    """Start the Sentry SDK for this process; ``options`` override the defaults (tests pass ``transport``)."""
    settings: dict[str, Any] = {
        "dsn": dsn,
        "environment": environment,
        "release": release,
        "send_default_pii": False,
        "include_local_variables": False,
        "max_request_body_size": "never",
        "event_scrubber": EventScrubber(denylist=[*DEFAULT_DENYLIST, *sorted(SENSITIVE_KEYS)], recursive=True),
        "before_send": scrub_event,
        "before_send_transaction": scrub_event,
        "before_breadcrumb": scrub_breadcrumb,
        "integrations": [DjangoIntegration(), CeleryIntegration()],
        "traces_sample_rate": 0.0,
    }
    settings.update(options)
    sentry_sdk.init(**settings)
