"""JSON logs with no card numbers and no secrets in them.

Wired in ``settings.LOGGING``: the console handler carries two filters and one formatter.

1. ``common.card_data.CardNumberMaskingFilter`` masks card numbers (Luhn) in the
   message, its arguments, ``extra=`` values and exception text.
2. :class:`SecretScrubbingFilter` masks ``Bearer`` credentials, API tokens
   (``spt_…``), payment-method tokens (``pm_…``), gateway secret keys, IBAN-like
   strings and ``password=…``-style pairs the same way.
3. :func:`json_formatter` renders one JSON object per line through structlog's
   ``ProcessorFormatter``: ``timestamp`` (UTC, ISO 8601), ``level``, ``logger``,
   ``event``, ``request_id`` when the record belongs to a request, any ``extra=``
   fields and ``exception``. As a last safety net the rendered line is scanned once
   more, so a value that only became text during rendering (an object's ``repr``)
   cannot leak either.

Speed: on a line with nothing to mask each step is one C-level regex scan.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
from structlog.typing import EventDict, WrappedLogger

from common.card_data import RecordScrubbingFilter, mask_card_numbers

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse

__all__ = [
    "OncePerInterval",
    "RequestLogContextMiddleware",
    "SecretScrubbingFilter",
    "json_formatter",
    "scrub_secrets",
    "scrub_text",
]

REDACTED = "[REDACTED]"

# Each kind of secret has its own pattern, run only when a cheap substring test says it may
# be there: on an ordinary line the whole scrub is a few substring tests and one regex scan.
_BEARER = re.compile(r"\b((?i:bearer)\s+)[A-Za-z0-9._~+/=-]+")
# Our API tokens, gateway payment-method tokens, Stripe-style secret keys and webhook secrets.
_PREFIXED = re.compile(r"\b((?:spt|pm|sk_live|sk_test|rk_live|rk_test|whsec)_)[A-Za-z0-9_-]+")
# key=value / "key": "value" pairs whose key names a secret.
_PAIR = re.compile(
    r"""\b((?i:password|passwd|secret|api_?key|access_token|refresh_token|client_secret)["']?\s*[=:]\s*["']?)"""
    r"""[^\s"',;&]+"""
)
# IBAN-like: two letters, two digits, 11-30 letters/digits, compact or in groups of four.
_IBAN = re.compile(r"\b[A-Za-z]{2}[0-9]{2}(?:[A-Za-z0-9]{11,30}|(?: [A-Za-z0-9]{4}){2,7}(?: [A-Za-z0-9]{1,4})?)\b")
_PAIR_WORDS = ("pass", "secret", "key", "token")


def _iban_checksum_ok(compact: str) -> bool:
    if not 15 <= len(compact) <= 34 or not compact.isalnum() or not compact.isascii():
        return False
    rearranged = (compact[4:] + compact[:4]).upper()
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _keep_prefix(match: re.Match[str]) -> str:
    return match.group(1) + REDACTED


def _mask_iban(match: re.Match[str]) -> str:
    text = match.group()
    compact = text.replace(" ", "")
    # Upper-case, as IBANs are written, is masked on shape alone; mixed/lower case (a hex id,
    # a word) only when the ISO 13616 check digits agree, so ordinary ids stay readable.
    if text == text.upper() or _iban_checksum_ok(compact):
        return f"[IBAN ****{compact[-4:]}]"
    return text


def scrub_secrets(text: str) -> str:
    """``text`` with tokens, secret pairs and IBAN-like strings masked (card numbers: see :func:`scrub_text`)."""
    lowered = text.lower()
    if "bearer" in lowered:
        text = _BEARER.sub(_keep_prefix, text)
    if "_" in text:
        text = _PREFIXED.sub(_keep_prefix, text)
    if any(word in lowered for word in _PAIR_WORDS):
        text = _PAIR.sub(_keep_prefix, text)
    return _IBAN.sub(_mask_iban, text)


def scrub_text(text: str) -> str:
    """``text`` with card numbers masked and secrets scrubbed: what logs and Sentry events may contain."""
    return scrub_secrets(mask_card_numbers(text))


class SecretScrubbingFilter(RecordScrubbingFilter):
    """Scrub secrets from a record before any handler formats it; never drops a record.

    Same contract as ``CardNumberMaskingFilter`` (put it on every handler, after that
    one; both are ``common.card_data.RecordScrubbingFilter``): the message is formatted
    and scrubbed and ``args`` cleared; structlog event dicts, ``extra=`` values (not
    structlog's ``_…`` ones), ``stack_info`` and the exception text are scrubbed, and
    the exception is kept only as scrubbed text (``exc_text``), never re-rendered.
    """

    skip_private_extras = True

    def scrub_string(self, text: str) -> str:
        return scrub_secrets(text)

    def scrub_exception(self, text: str) -> str:
        return scrub_text(text)


# --- request correlation --------------------------------------------------------


class OncePerInterval(logging.Filter):
    """Let one record through per ``seconds`` (per process), for loggers that repeat one failure per request."""

    def __init__(self, seconds: float = 60.0) -> None:
        super().__init__()
        self.seconds = seconds
        self._next = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.seconds
        return True


class RequestLogContextMiddleware:
    """Binds the request id (set by ``config.middleware.RequestIdMiddleware``, which must run
    first) to every log line written while the request is handled."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = getattr(request, "request_id", "")
        if not request_id:
            return self.get_response(request)
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            return self.get_response(request)


def _request_from_record(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Django's own request log lines carry ``extra={"request": ...}``: keep its id, not the object."""
    request = event_dict.pop("request", None)
    if "request_id" not in event_dict:
        request_id = getattr(request, "request_id", None)
        if request_id:
            event_dict["request_id"] = request_id
    return event_dict


def _exception_text(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """The exception as the filters left it (scrubbed text in ``exc_text``)."""
    record = event_dict.get("_record")
    if "exception" not in event_dict and record is not None and record.exc_text:
        event_dict["exception"] = record.exc_text
    return event_dict


def _drop_structlog_internals(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    for key in ("_logger", "_name", "server_time"):
        event_dict.pop(key, None)
    return event_dict


_LEADING_KEYS = ("timestamp", "level", "logger", "event", "request_id")


def _render_json(_: WrappedLogger, __: str, event_dict: EventDict) -> str:
    ordered = {key: event_dict.pop(key) for key in _LEADING_KEYS if key in event_dict}
    ordered.update(event_dict)
    # Last safety net: anything that became text only now (a repr) is scanned once more.
    return scrub_text(json.dumps(ordered, default=repr, separators=(",", ":")))


_TIMESTAMPER = structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp")

# Run on records from the standard library's loggers (everything in this project today).
_FOREIGN_PRE_CHAIN: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    _TIMESTAMPER,
    structlog.stdlib.ExtraAdder(),
    _request_from_record,
    structlog.processors.format_exc_info,
    _exception_text,
]


def configure_structlog() -> None:
    """Route ``structlog.get_logger()`` through the standard library, so both share handlers and filters."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            _TIMESTAMPER,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def json_formatter() -> structlog.stdlib.ProcessorFormatter:
    """The ``"()"`` factory for ``LOGGING["formatters"]``: one JSON object per line."""
    configure_structlog()
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_FOREIGN_PRE_CHAIN,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _drop_structlog_internals,
            _render_json,
        ],
    )
