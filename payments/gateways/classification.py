"""Every raw gateway result mapped to an ``OutcomeKind``, in one place.

The tables below are the whole policy; the adapters only look results up here.
The one rule behind them: ``RETRYABLE`` means *proven* not charged. Anything
that may have reached the gateway and been processed is ``UNKNOWN``, which the
engine resolves by asking the gateway (``find_charge``) or by re-submitting with
the *same* idempotency key. A wrong ``RETRYABLE`` is a double charge (the next
attempt carries a new key); a wrong ``UNKNOWN`` costs one lookup.

``docs/gateways.md`` renders these tables for people; keep the two in step.
"""

from __future__ import annotations

import email.utils
import logging
import math
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Final

import httpx
import stripe
import urllib3.exceptions

from payments.currencies import CURRENCY_EXPONENTS
from payments.gateways.base import ChargeOutcome, ChargeRequest, OutcomeKind

SUCCEEDED: Final = OutcomeKind.SUCCEEDED
DECLINED: Final = OutcomeKind.DECLINED
RETRYABLE: Final = OutcomeKind.RETRYABLE
UNKNOWN: Final = OutcomeKind.UNKNOWN

# Our own failure codes (stable: the API shows them to clients as ``failure.code``).
GATEWAY_REJECTED: Final = "gateway_rejected"
GATEWAY_REJECTED_MESSAGE: Final = "The payment could not be processed. Our team has been notified."
CARD_DECLINED: Final = "card_declined"
AUTHENTICATION_REQUIRED: Final = "authentication_required"
# The gateway's code for "this key already names a different request" (sandbox and our own API).
IDEMPOTENCY_KEY_REUSED: Final = "idempotency_key_reused"

# A Retry-After beyond this is a misconfigured gateway, not advice to wait a day.
MAX_RETRY_AFTER_SECONDS: Final = 3600.0


@dataclass(frozen=True, slots=True)
class Rule:
    kind: OutcomeKind
    failure_code: str = ""
    needs_operator: bool = False
    why: str = ""  # goes into ChargeOutcome.detail: for operators, never for users
    in_progress: bool = False  # accepted, still processing: pending, not a gateway failure


# --- Declines: provider codes → (our code, a message safe to show the user) -------------------------
# Fraud-related codes (lost/stolen card, fraudulent, pickup_card, ...) deliberately fall through to the
# generic "card_declined": card networks ask merchants not to tell the payer why. The raw code is kept
# in ``detail`` for operators.
DECLINE_MESSAGES: Final[Mapping[str, tuple[str, str]]] = {
    "card_declined": (CARD_DECLINED, "The payment method was declined."),
    "generic_decline": (CARD_DECLINED, "The payment method was declined."),
    "do_not_honor": (CARD_DECLINED, "The payment method was declined."),
    "insufficient_funds": ("insufficient_funds", "The payment method has insufficient funds."),
    "card_velocity_exceeded": ("insufficient_funds", "The payment method has exceeded its limit."),
    "withdrawal_count_limit_exceeded": ("insufficient_funds", "The payment method has exceeded its limit."),
    "expired_card": ("expired_card", "The card has expired."),
    "incorrect_cvc": ("incorrect_cvc", "The card's security code is incorrect."),
    "invalid_cvc": ("incorrect_cvc", "The card's security code is incorrect."),
    "incorrect_number": ("invalid_payment_method", "The card number is incorrect."),
    "invalid_number": ("invalid_payment_method", "The card number is incorrect."),
    "invalid_expiry_month": ("invalid_payment_method", "The card's expiry date is invalid."),
    "invalid_expiry_year": ("invalid_payment_method", "The card's expiry date is invalid."),
    "card_not_supported": ("card_not_supported", "The card does not support this kind of payment."),
    "currency_not_supported": ("currency_not_supported", "The card does not support this currency."),
    AUTHENTICATION_REQUIRED: (
        AUTHENTICATION_REQUIRED,
        "The bank asked the cardholder to authenticate this payment, which a scheduled payment cannot do.",
    ),
}
GENERIC_DECLINE: Final = DECLINE_MESSAGES["card_declined"]

# Stripe card errors that prove nothing was charged yet advise trying again later: retrying (under a new
# attempt's key) is both safe and likely to succeed.
RETRYABLE_CARD_ERROR_CODES: Final = frozenset({"processing_error", "try_again_later"})


def decline_outcome(*codes: str | None, reference: str = "", detail: str = "") -> ChargeOutcome:
    """A DECLINED outcome for the first known code of ``codes`` (most specific first), else a generic one."""
    public_code, message = next((DECLINE_MESSAGES[c] for c in codes if c and c in DECLINE_MESSAGES), GENERIC_DECLINE)
    return ChargeOutcome(
        kind=DECLINED, reference=reference, failure_code=public_code, failure_message=message, detail=detail
    )


def rejected_outcome(detail: str, *, reference: str = "") -> ChargeOutcome:
    """Terminal: our request (or our credentials) was refused before anything was charged. Pages a person."""
    return ChargeOutcome(
        kind=DECLINED,
        reference=reference,
        failure_code=GATEWAY_REJECTED,
        failure_message=GATEWAY_REJECTED_MESSAGE,
        detail=detail,
        needs_operator=True,
    )


def _outcome(rule: Rule, detail: str, *, reference: str = "", retry_after: float | None = None) -> ChargeOutcome:
    if rule.kind is DECLINED and rule.failure_code == GATEWAY_REJECTED:
        return rejected_outcome(f"{detail}: {rule.why}" if rule.why else detail, reference=reference)
    return ChargeOutcome(
        kind=rule.kind,
        reference=reference,
        failure_code=rule.failure_code,
        retry_after_seconds=retry_after if rule.kind is RETRYABLE else None,
        detail=f"{detail}: {rule.why}" if rule.why else detail,
        needs_operator=rule.needs_operator,
        in_progress=rule.in_progress,
    )


# --- Before sending: a request no gateway could accept ------------------------------------------------
def minor_units(amount: Decimal, currency: str) -> int:
    """Exact minor units (12550 for 125.50 EUR); ``ValueError`` rather than ever rounding an amount."""
    try:
        exponent = CURRENCY_EXPONENTS[currency]
    except KeyError:
        raise ValueError(f"unsupported currency {currency!r}") from None
    try:
        scaled = amount.scaleb(exponent)
        units = int(scaled)
    except (InvalidOperation, ValueError, OverflowError):
        raise ValueError("amount is not a finite number") from None
    if scaled != units:
        raise ValueError(f"amount has more decimals than {currency} allows ({exponent})")
    if units <= 0:
        raise ValueError("amount must be greater than zero")
    return units


def major_units_text(amount: Decimal, currency: str) -> str:
    """The amount as the currency writes it: ``"125.50"`` EUR, ``"500"`` JPY, ``"1.234"`` BHD."""
    units = minor_units(amount, currency)
    exponent = CURRENCY_EXPONENTS[currency]
    return f"{Decimal(units).scaleb(-exponent):.{exponent}f}"


def preflight(request: ChargeRequest) -> ChargeOutcome | None:
    """``None`` when the request can be sent; otherwise the terminal outcome (nothing was sent)."""
    try:
        minor_units(request.amount, request.currency)
    except ValueError as exc:
        return rejected_outcome(f"not sent, invalid request: {exc}")
    if not request.idempotency_key or not request.payment_method:
        return rejected_outcome("not sent, invalid request: idempotency key and payment method are required")
    return None


# --- Transport errors (httpx), checked in order: subclasses before their bases ------------------------
TRANSPORT_ERROR_RULES: Final[tuple[tuple[type[Exception], Rule], ...]] = (
    (httpx.ConnectTimeout, Rule(RETRYABLE, why="connect timed out: the request was never sent")),
    (httpx.ConnectError, Rule(RETRYABLE, why="could not connect (refused, DNS, TLS): the request was never sent")),
    (httpx.PoolTimeout, Rule(RETRYABLE, why="no free connection in the pool: the request was never sent")),
    (httpx.ReadTimeout, Rule(UNKNOWN, why="sent, but no answer in time: the gateway may have charged")),
    (httpx.WriteTimeout, Rule(UNKNOWN, why="timed out while sending: the gateway may have charged")),
    (httpx.RemoteProtocolError, Rule(UNKNOWN, why="connection closed without a complete answer")),
    (httpx.ReadError, Rule(UNKNOWN, why="connection failed while reading the answer")),
    (httpx.WriteError, Rule(UNKNOWN, why="connection failed while sending: the gateway may have charged")),
)
UNEXPECTED_ERROR_RULE: Final = Rule(UNKNOWN, why="unexpected error around the request: it may have been processed")


def transport_error_rule(exc: BaseException) -> Rule:
    for exc_type, rule in TRANSPORT_ERROR_RULES:
        if isinstance(exc, exc_type):
            return rule
    return UNEXPECTED_ERROR_RULE


def classify_transport_error(exc: BaseException) -> ChargeOutcome:
    return _outcome(transport_error_rule(exc), type(exc).__name__)


def never_sent(exc: BaseException) -> bool:
    """True only for errors that prove the request did not leave this process."""
    return transport_error_rule(exc).kind is RETRYABLE


# --- Transport errors (urllib3: the sandbox adapter, retries disabled), checked in order ----------------
# NewConnectionError and NameResolutionError subclass ConnectTimeoutError; urllib3 raises the three only from
# connect(), before a byte is written. A pooled keep-alive connection the server already closed is replaced
# before sending; one that dies under a request raises ProtocolError (or ReadTimeoutError), i.e. UNKNOWN.
URLLIB3_ERROR_RULES: Final[tuple[tuple[type[Exception], Rule], ...]] = (
    (urllib3.exceptions.ConnectTimeoutError, Rule(RETRYABLE, why="could not connect: the request was never sent")),
    (urllib3.exceptions.EmptyPoolError, Rule(RETRYABLE, why="no free connection in the pool: never sent")),
    (urllib3.exceptions.ClosedPoolError, Rule(RETRYABLE, why="the connection pool was closed: never sent")),
    (urllib3.exceptions.ReadTimeoutError, Rule(UNKNOWN, why="sent, no answer in time: the gateway may have charged")),
    (urllib3.exceptions.ProtocolError, Rule(UNKNOWN, why="connection lost before a complete answer")),
    (urllib3.exceptions.IncompleteRead, Rule(UNKNOWN, why="the answer was cut short: the gateway may have charged")),
)


def classify_urllib3_error(exc: BaseException) -> ChargeOutcome:
    """A urllib3 exception → outcome; anything not in the table is UNKNOWN."""
    for exc_type, rule in URLLIB3_ERROR_RULES:
        if isinstance(exc, exc_type):
            return _outcome(rule, type(exc).__name__)
    return _outcome(UNEXPECTED_ERROR_RULE, type(exc).__name__)


# --- HTTP answers (sandbox gateway contract, shared/spec/API.md "Sandbox gateway") ---------------------
# Exact (status, problem code) pairs first, then exact statuses, then the status class.
PROBLEM_CODE_RULES: Final[Mapping[tuple[int, str], Rule]] = {
    (422, IDEMPOTENCY_KEY_REUSED): Rule(
        UNKNOWN,
        needs_operator=True,
        why="the gateway holds a different request under this idempotency key; an operator must compare them "
        "(never retry under a new key)",
    ),
}
HTTP_STATUS_RULES: Final[Mapping[int, Rule]] = {
    429: Rule(RETRYABLE, why="rate limited before processing"),
    503: Rule(RETRYABLE, why="gateway unavailable; the contract says nothing was charged"),
    # 502 comes from a proxy whose upstream failed mid-answer: the upstream may have charged.
    502: Rule(UNKNOWN, why="bad gateway from an intermediary: the upstream may have charged"),
    504: Rule(UNKNOWN, why="gateway timeout from an intermediary: the upstream may have charged"),
    408: Rule(UNKNOWN, why="the gateway timed out reading the request"),
    409: Rule(UNKNOWN, why="a concurrent request holds this idempotency key: it may charge"),
}
CLIENT_ERROR_RULE: Final = Rule(DECLINED, failure_code=GATEWAY_REJECTED, why="the gateway refused our request")
SERVER_ERROR_RULE: Final = Rule(UNKNOWN, why="server error: the gateway may have charged")
UNEXPECTED_STATUS_RULE: Final = Rule(UNKNOWN, why="unexpected status")

# 2xx answers: the charge body's "status".
CHARGE_STATUS_RULES: Final[Mapping[str, OutcomeKind]] = {"succeeded": SUCCEEDED, "declined": DECLINED}


def http_status_rule(status_code: int, problem_code: str = "") -> Rule:
    if (rule := PROBLEM_CODE_RULES.get((status_code, problem_code))) is not None:
        return rule
    if (rule := HTTP_STATUS_RULES.get(status_code)) is not None:
        return rule
    if 400 <= status_code < 500:
        return CLIENT_ERROR_RULE
    if 500 <= status_code < 600:
        return SERVER_ERROR_RULE
    return UNEXPECTED_STATUS_RULE


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None when absent/invalid."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000" dates: RFC 9110 says GMT
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def classify_http_response(status_code: int, body: object, headers: Mapping[str, str]) -> ChargeOutcome:
    """``POST /v1/charges``'s answer → outcome. ``body`` is the decoded JSON (None when it was not JSON)."""
    data = body if isinstance(body, Mapping) else {}
    if 200 <= status_code < 300:
        charge_id = data.get("id")
        kind = CHARGE_STATUS_RULES.get(str(data.get("status")))
        if not isinstance(charge_id, str) or not charge_id or kind is None:
            # It answered "OK" with something we cannot read: it may well have charged.
            return ChargeOutcome(kind=UNKNOWN, detail=f"HTTP {status_code} with an unreadable charge body")
        if kind is SUCCEEDED:
            return ChargeOutcome(kind=SUCCEEDED, reference=charge_id)
        raw_code = data.get("failure_code")
        raw_code = raw_code if isinstance(raw_code, str) else ""
        return decline_outcome(raw_code, reference=charge_id, detail=f"declined by the gateway: {raw_code or '-'}")
    problem_code = data.get("code")
    problem_code = problem_code if isinstance(problem_code, str) else ""
    rule = http_status_rule(status_code, problem_code)
    return _outcome(
        rule,
        f"HTTP {status_code} {problem_code or '-'}",
        retry_after=parse_retry_after(headers.get("Retry-After")),
    )


# --- Stripe ------------------------------------------------------------------------------------------
# A confirmed, off-session PaymentIntent's status → outcome.
PAYMENT_INTENT_STATUS_RULES: Final[Mapping[str, Rule]] = {
    "succeeded": Rule(SUCCEEDED),
    # Off-session, nobody can complete 3-D Secure: terminal. The payer must re-authorise the card.
    "requires_action": Rule(DECLINED, failure_code=AUTHENTICATION_REQUIRED),
    "requires_payment_method": Rule(DECLINED, failure_code=CARD_DECLINED),
    # Asynchronous methods settle later: nothing to conclude yet.
    "processing": Rule(UNKNOWN, in_progress=True, why="the payment is still processing at Stripe"),
    # We never ask for manual capture or unconfirmed intents: something is misconfigured.
    "requires_capture": Rule(UNKNOWN, needs_operator=True, why="authorised but not captured (manual capture?)"),
    "requires_confirmation": Rule(UNKNOWN, needs_operator=True, why="created but not confirmed"),
    "canceled": Rule(DECLINED, failure_code=GATEWAY_REJECTED, why="the PaymentIntent was canceled"),
}


def classify_payment_intent(
    intent_id: str, status: str, *, error_code: str | None = None, decline_code: str | None = None
) -> ChargeOutcome:
    """A PaymentIntent returned by a successful create call (HTTP 200)."""
    rule = PAYMENT_INTENT_STATUS_RULES.get(status, Rule(UNKNOWN, needs_operator=True, why="unexpected status"))
    detail = f"PaymentIntent status {status}"
    if rule.kind is DECLINED and rule.failure_code != GATEWAY_REJECTED:
        return decline_outcome(
            decline_code,
            error_code,
            rule.failure_code,
            reference=intent_id,
            detail=f"{detail}, {error_code or '-'}/{decline_code or '-'}",
        )
    return _outcome(rule, detail, reference=intent_id)


# Stripe SDK exceptions, checked in order. The adapter turns APIConnectionError into RETRYABLE only when
# no try (the SDK retries itself) can have reached Stripe; RateLimitError is demoted the same way.
STRIPE_ERROR_RULES: Final[tuple[tuple[type[Exception], Rule], ...]] = (
    (stripe.CardError, Rule(DECLINED, failure_code=CARD_DECLINED)),
    (stripe.RateLimitError, Rule(RETRYABLE, why="rate limited by Stripe before processing")),
    (
        stripe.IdempotencyError,
        Rule(
            UNKNOWN,
            needs_operator=True,
            why="Stripe holds a different request under this idempotency key; an operator must compare them",
        ),
    ),
    (stripe.AuthenticationError, Rule(DECLINED, failure_code=GATEWAY_REJECTED, why="Stripe refused our API key")),
    (stripe.PermissionError, Rule(DECLINED, failure_code=GATEWAY_REJECTED, why="our API key lacks a permission")),
    (stripe.InvalidRequestError, Rule(DECLINED, failure_code=GATEWAY_REJECTED, why="Stripe refused our request")),
    (stripe.APIConnectionError, Rule(UNKNOWN, why="network error talking to Stripe: it may have charged")),
    (stripe.APIError, Rule(UNKNOWN, why="Stripe server error: it may have charged")),
)
STRIPE_UNEXPECTED_RULE: Final = Rule(UNKNOWN, needs_operator=True, why="unexpected Stripe error")
STRIPE_RETRY_MAY_HAVE_CHARGED: Final = (
    "the SDK retried after a try that may have reached Stripe, so this error does not prove nothing was charged"
)


def stripe_error_rule(exc: BaseException) -> Rule:
    for exc_type, rule in STRIPE_ERROR_RULES:
        if isinstance(exc, exc_type):
            return rule
    return STRIPE_UNEXPECTED_RULE


def classify_stripe_error(
    exc: stripe.StripeError, *, connection_never_sent: bool = False, earlier_try_may_have_charged: bool = False
) -> ChargeOutcome:
    """A Stripe SDK exception → outcome.

    ``connection_never_sent``: the adapter's HTTP client proved that the final try never left this process
    (an ``APIConnectionError`` from a refused connect). ``earlier_try_may_have_charged``: an earlier try within
    the SDK's own retries timed out or got a 5xx/409, so a final "not processed" error proves nothing.
    """
    rule = stripe_error_rule(exc)
    error = exc.error
    code = exc.code or (error.code if error is not None else None)
    decline_code = getattr(error, "decline_code", None) if error is not None else None
    intent = getattr(error, "payment_intent", None) if error is not None else None
    reference = str(getattr(intent, "id", "") or "")
    detail = f"{type(exc).__name__} HTTP {exc.http_status or '-'} {code or '-'}"
    if exc.request_id:
        detail += f" request {exc.request_id}"

    if isinstance(exc, stripe.APIConnectionError) and connection_never_sent:
        rule = Rule(RETRYABLE, why="could not connect to Stripe: the request was never sent")
    if rule.kind is RETRYABLE and earlier_try_may_have_charged:
        rule = Rule(UNKNOWN, why=STRIPE_RETRY_MAY_HAVE_CHARGED)
    elif rule.failure_code == GATEWAY_REJECTED and earlier_try_may_have_charged:
        # "Refused" is proof that nothing was charged only if no earlier try may have been processed.
        rule = Rule(UNKNOWN, needs_operator=True, why=f"{rule.why}; {STRIPE_RETRY_MAY_HAVE_CHARGED}")

    if isinstance(exc, stripe.CardError):
        if code in RETRYABLE_CARD_ERROR_CODES or decline_code in RETRYABLE_CARD_ERROR_CODES:
            return ChargeOutcome(
                kind=RETRYABLE, reference=reference, detail=f"{detail}/{decline_code or '-'}: declined, try later"
            )
        return decline_outcome(decline_code, code, reference=reference, detail=f"{detail}/{decline_code or '-'}")
    headers = exc.headers or {}
    return _outcome(rule, detail, reference=reference, retry_after=parse_retry_after(headers.get("Retry-After")))


def charge_outcome(
    logger: logging.Logger, request: ChargeRequest, send: Callable[[ChargeRequest], ChargeOutcome]
) -> ChargeOutcome:
    """``Gateway.charge`` around an adapter's ``send`` (the one request): never raises.

    Nothing is sent when ``preflight`` refuses; an exception from ``send`` (a bug of ours, perhaps after the
    request left) is never a guess (``unexpected_error_outcome``); the outcome is logged either way.
    """
    outcome = preflight(request)
    if outcome is None:
        try:
            outcome = send(request)
        except Exception as exc:
            outcome = unexpected_error_outcome(exc)
    log_outcome(logger, request, outcome)
    return outcome


def log_outcome(logger: logging.Logger, request: ChargeRequest, outcome: ChargeOutcome) -> None:
    """One line per charge, louder the more it needs attention. The payment method token is never logged."""
    level = logging.DEBUG
    if outcome.needs_operator:
        level = logging.ERROR
    elif outcome.kind in (UNKNOWN, RETRYABLE):
        level = logging.WARNING
    if logger.isEnabledFor(level):
        logger.log(
            level,
            "charge payment=%s key=%s outcome=%s reference=%s code=%s detail=%s",
            request.payment_id,
            request.idempotency_key,
            outcome.kind,
            outcome.reference or "-",
            outcome.failure_code or "-",
            outcome.detail or "-",
        )


def unexpected_error_outcome(exc: BaseException) -> ChargeOutcome:
    """A bug of ours around a request that may have left: UNKNOWN, and a person must look.

    Only the exception's type and where it was raised go into ``detail``: its message or the frame's
    locals (which an error tracker would capture with ``exc_info``) could hold the payment method token.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
    return ChargeOutcome(kind=UNKNOWN, detail=f"unexpected {type(exc).__name__}{where}", needs_operator=True)
