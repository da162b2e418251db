"""The adapter for Stripe: one confirmed, off-session PaymentIntent per charge.

A scheduled payment runs with nobody at the keyboard, so the PaymentIntent is
created and confirmed in one call (``confirm=True, off_session=True``) with a
saved payment method and no redirect-based methods. Its idempotency key is the
attempt's key, so the SDK's own network retries (``max_network_retries``) and
any later re-submission of the same attempt can never charge twice: Stripe
replays the stored response for a key for at least 24 hours.

HTTP goes through ``HttpxStripeClient`` (an ``httpx.Client`` per process with
keep-alive), which also records, per call, whether any try may have reached
Stripe: that is what lets a refused connection be RETRYABLE (proven not sent)
while a timeout stays UNKNOWN. Classification lives in ``classification.py``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

import httpx
import stripe
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from payments.currencies import CURRENCY_EXPONENTS
from payments.gateways import classification
from payments.gateways.base import ChargeOutcome, ChargeRecord, ChargeRequest, GatewayLookupError, ProcessClient

if TYPE_CHECKING:
    from stripe.params import PaymentIntentCreateParams

logger = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT_SECONDS: Final = 2.0
# At least EXECUTION_BATCH_SIZE (50): a batch goes out in one wave, so with the SDK's retries it fits
# SUBMIT_LEASE (payments.engine.timing checks it); 32 made two waves, and a batch could outlive its lease.
DEFAULT_CONCURRENCY: Final = 64
# The SDK retries connection errors, 409s and 5xx itself, with the same Idempotency-Key (safe), after
# 0.5 s then 1 s (with jitter). Two retries absorb a blip without holding a worker for long.
DEFAULT_MAX_NETWORK_RETRIES: Final = 2
SEARCH_PAGE_LIMIT: Final = 10


class _DropStripeDebugLogs(logging.Filter):
    """The SDK logs request bodies ("Post details", with the payment method) at DEBUG and raw error
    messages (which can quote a payment method id) at INFO: only its warnings and errors pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


_stripe_logger = logging.getLogger("stripe")
if not any(isinstance(f, _DropStripeDebugLogs) for f in _stripe_logger.filters):
    _stripe_logger.addFilter(_DropStripeDebugLogs())


@dataclass(slots=True)
class CallTrace:
    """What the tries of one SDK call (the first plus the SDK's retries) proved about reaching Stripe."""

    tries: int = 0
    may_have_charged: bool = False  # some try was sent and got no answer, a 5xx or a 409
    last_never_sent: bool = False  # the last try failed before its request left this process


class HttpxStripeClient(stripe.HTTPClient):
    """``stripe.HTTPClient`` over a synchronous ``httpx.Client`` (keep-alive, our timeouts, any transport)."""

    name = "httpx"

    def __init__(self, client: httpx.Client) -> None:
        super().__init__()
        self._client = client
        self._traces = threading.local()

    def begin_call(self) -> CallTrace:
        trace = CallTrace()
        self._traces.current = trace
        return trace

    def _trace(self) -> CallTrace:
        trace: CallTrace | None = getattr(self._traces, "current", None)
        return trace if trace is not None else self.begin_call()

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        post_data: Any = None,
        *,
        _usage: list[str] | None = None,
    ) -> tuple[str, int, Mapping[str, str]]:
        trace = self._trace()
        trace.tries += 1
        try:
            response = self._client.request(method.upper(), url, headers=dict(headers or {}), content=post_data)
        except httpx.HTTPError as exc:
            trace.last_never_sent = classification.never_sent(exc)
            trace.may_have_charged |= not trace.last_never_sent
            # should_retry: the SDK retries under the same Idempotency-Key, which Stripe deduplicates.
            raise stripe.APIConnectionError(  # type: ignore[no-untyped-call]
                f"Network error talking to Stripe ({type(exc).__name__})", should_retry=True
            ) from exc
        trace.last_never_sent = False
        trace.may_have_charged |= response.status_code >= 500 or response.status_code == 409
        return response.text, response.status_code, response.headers

    def request_stream(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        post_data: Any = None,
        *,
        _usage: list[str] | None = None,
    ) -> tuple[Any, int, Mapping[str, str]]:
        raise NotImplementedError("streaming responses are not used by the payments adapter")

    def close(self) -> None:
        self._client.close()


@dataclass(frozen=True, slots=True)
class _Connection:
    http: HttpxStripeClient
    client: stripe.StripeClient


class StripeGateway:
    """``Gateway`` for Stripe PaymentIntents (create+confirm off-session; search for reconciliation)."""

    name = "stripe"

    def __init__(
        self,
        api_key: str | None = None,
        *,
        timeout: float | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_SECONDS,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_network_retries: int = DEFAULT_MAX_NETWORK_RETRIES,
        transport: httpx.BaseTransport | None = None,
        api_base: str | None = None,
    ) -> None:
        self._api_key = settings.STRIPE_API_KEY if api_key is None else api_key
        if not self._api_key:
            raise ImproperlyConfigured("STRIPE_API_KEY must be set when GATEWAY_BACKEND is 'stripe'")
        self.timeout = float(settings.GATEWAY_TIMEOUT_SECONDS if timeout is None else timeout)
        self.connect_timeout = min(connect_timeout, self.timeout)
        self.concurrency = max(1, concurrency)
        self.max_network_retries = max(0, max_network_retries)
        self._transport = transport  # tests only
        self._api_base = api_base
        self._per_process: ProcessClient[_Connection] = ProcessClient(
            self._connect,
            lambda connection: connection.http.close(),
            threads=self.concurrency,
            thread_name_prefix="stripe-gateway",
        )

    def _connect(self) -> _Connection:
        http = HttpxStripeClient(
            httpx.Client(
                timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout),
                limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
                transport=self._transport,
                follow_redirects=False,
            )
        )
        client = stripe.StripeClient(
            self._api_key,
            http_client=http,
            max_network_retries=self.max_network_retries,
            base_addresses={"api": self._api_base} if self._api_base else None,
        )
        return _Connection(http=http, client=client)

    def close(self) -> None:
        """Close this process's connections and threads (tests, shutdown hooks)."""
        self._per_process.close()

    # --- Gateway ----------------------------------------------------------------------------------------
    def charge(self, request: ChargeRequest) -> ChargeOutcome:
        return classification.charge_outcome(logger, request, self._create_payment_intent)

    def charge_many(self, requests: Sequence[ChargeRequest]) -> list[ChargeOutcome]:
        if len(requests) <= 1:
            return [self.charge(request) for request in requests]
        return list(self._per_process.executor.get().map(self.charge, requests))

    def find_charge(self, idempotency_key: str) -> ChargeRecord | None:
        """The PaymentIntent created under this key, found with Stripe's Search API (by metadata).

        Consistency: Search is *eventually* consistent. Stripe documents that new objects are usually
        searchable within a minute, and up to an hour behind during incidents. So None here means "Search
        does not show one (yet)", not proof that none exists. That is safe only because the caller's next
        step is to re-send the *same* request under the *same* idempotency key (``payments_reconcile``
        does exactly that, and never moves to a new key while an attempt is in doubt): Stripe then
        replays the stored result, or makes the charge once if the first request never arrived.

        Key retention: Stripe keeps idempotency keys for at least 24 hours. Within that window the
        re-send is the reliable answer; after it, a re-send would be a new request, so a payment still
        in doubt after a day needs a person (Search will long since show any PaymentIntent by then).

        A PaymentIntent still ``processing`` is returned as such (the engine polls it on its own schedule);
        any other status that is not final, and any failure to ask, raise ``GatewayLookupError``.
        """
        connection = self._per_process.client.get()
        connection.http.begin_call()
        query = f"metadata['idempotency_key']:'{_search_literal(idempotency_key)}'"
        try:
            page = connection.client.v1.payment_intents.search({"query": query, "limit": SEARCH_PAGE_LIMIT})
        except stripe.StripeError as exc:
            raise GatewayLookupError(f"Stripe search failed: {type(exc).__name__} {exc.http_status or '-'}") from exc
        intents = [intent for intent in page.data if _metadata(intent, "idempotency_key") == idempotency_key]
        if not intents:
            return None
        # Stripe lets one key create one PaymentIntent; if ever more match, a charged one is what matters.
        intents.sort(key=lambda intent: intent.status != "succeeded")
        return _record_from_intent(intents[0], idempotency_key)

    # --- internals ----------------------------------------------------------------------------------------
    def _create_payment_intent(self, request: ChargeRequest) -> ChargeOutcome:
        params: PaymentIntentCreateParams = {
            "amount": classification.minor_units(request.amount, request.currency),
            "currency": request.currency.lower(),
            "payment_method": request.payment_method,
            "confirm": True,
            "off_session": True,
            # Card-like methods only: a redirect (bank page, wallet) cannot happen off-session.
            "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
            # idempotency_key in metadata lets find_charge search for it (it is not a secret).
            "metadata": {"payment_id": request.payment_id, "idempotency_key": request.idempotency_key},
        }
        connection = self._per_process.client.get()
        trace = connection.http.begin_call()
        try:
            intent = connection.client.v1.payment_intents.create(params, {"idempotency_key": request.idempotency_key})
        except stripe.StripeError as exc:
            return classification.classify_stripe_error(
                exc,
                connection_never_sent=trace.last_never_sent,
                earlier_try_may_have_charged=trace.may_have_charged,
            )
        return _classify_intent(intent)


def _field(obj: object, name: str) -> Any:
    """A Stripe object's field, or None when the JSON left it out (attribute access would raise)."""
    return getattr(obj, name, None)


def _metadata(intent: stripe.PaymentIntent, key: str) -> str:
    metadata = _field(intent, "metadata")
    return str(metadata[key]) if metadata is not None and key in metadata else ""


def _classify_intent(intent: stripe.PaymentIntent) -> ChargeOutcome:
    error = _field(intent, "last_payment_error")
    return classification.classify_payment_intent(
        intent.id, intent.status, error_code=_field(error, "code"), decline_code=_field(error, "decline_code")
    )


def _search_literal(value: str) -> str:
    """Escape a value for a quoted string in Stripe's search query language."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


# A PaymentIntent's status → ChargeRecord.status. Anything else is not final: lookup raises.
_RECORD_STATUS: Final[Mapping[str, str]] = {
    "succeeded": "succeeded",
    "requires_payment_method": "declined",
    "requires_action": "declined",  # off-session: nobody can authenticate it (see classification)
    "canceled": "declined",
    # Accepted, settling (SEPA, ACH: days): the engine polls it on its own schedule.
    "processing": "processing",
}


def _record_from_intent(intent: stripe.PaymentIntent, idempotency_key: str) -> ChargeRecord:
    status = _RECORD_STATUS.get(intent.status)
    if status is None:
        raise GatewayLookupError(f"PaymentIntent {intent.id} is {intent.status}: not final yet")
    currency = intent.currency.upper()
    exponent = CURRENCY_EXPONENTS.get(currency)
    if exponent is None:
        raise GatewayLookupError(f"PaymentIntent {intent.id} is in an unsupported currency")
    outcome = _classify_intent(intent) if status == "declined" else None
    return ChargeRecord(
        reference=intent.id,
        status=status,
        idempotency_key=idempotency_key,
        amount=Decimal(intent.amount).scaleb(-exponent),
        currency=currency,
        payment_id=_metadata(intent, "payment_id"),
        failure_code=outcome.failure_code if outcome is not None else "",
        failure_message=outcome.failure_message if outcome is not None else "",
        raw_status=intent.status,
    )
