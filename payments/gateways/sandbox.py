"""The adapter for the sandbox gateway's HTTP API (``shared/spec/API.md``, "Sandbox gateway").

One ``httpx.Client`` with keep-alive connections per process, created on first
use: a Celery prefork child never inherits its parent's sockets. ``charge_many``
runs the requests on a thread pool over that client (measured faster than an
asyncio loop with ``httpx.AsyncClient`` for our batch sizes; see
``docs/gateways.md``). No retries here: the engine owns the retry policy, and
every outcome is classified in ``classification.py``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import httpx
from django.conf import settings

from payments.gateways import ProcessLocal, classification
from payments.gateways.base import ChargeOutcome, ChargeRecord, ChargeRequest, GatewayLookupError

logger = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT_SECONDS: Final = 2.0
# Threads per process = connections per process. Measured (docs/gateways.md): 8 is best against a local
# sandbox with no latency, 32 once the gateway answers in 5-50 ms; past 32, GIL contention and httpcore's
# per-request scan of its pool cost more than the extra parallelism brings.
DEFAULT_CONCURRENCY: Final = 32
# Below httpx's 5 s default and far below aiohttp's 75 s: we drop an idle connection before the server does,
# so a request rarely meets a connection the server is closing (that would read as UNKNOWN).
KEEPALIVE_EXPIRY_SECONDS: Final = 4.0
_JSON_HEADERS: Final = {"Content-Type": "application/json", "Accept": "application/json"}


class SandboxGateway:
    """``Gateway`` for the sandbox: ``POST /v1/charges`` and ``GET /v1/charges?idempotency_key=``."""

    name = "sandbox"

    def __init__(
        self,
        base_url: str | None = None,
        *,
        timeout: float | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_SECONDS,
        concurrency: int = DEFAULT_CONCURRENCY,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = (base_url or settings.GATEWAY_URL).rstrip("/")
        self.timeout = float(settings.GATEWAY_TIMEOUT_SECONDS if timeout is None else timeout)
        self.connect_timeout = min(connect_timeout, self.timeout)
        self.concurrency = max(1, concurrency)
        self._transport = transport  # tests only
        self._client: ProcessLocal[httpx.Client] = ProcessLocal(self._new_client)
        self._executor: ProcessLocal[ThreadPoolExecutor] = ProcessLocal(self._new_executor)

    def _new_client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout),
            limits=httpx.Limits(
                max_connections=self.concurrency,
                max_keepalive_connections=self.concurrency,
                keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS,
            ),
            transport=self._transport,
            headers={"User-Agent": "scheduled-payments/1 (sandbox adapter)"},
            follow_redirects=False,
        )

    def _new_executor(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="sandbox-gateway")

    def close(self) -> None:
        """Close this process's connections and threads (tests, shutdown hooks)."""
        if (executor := self._executor.pop()) is not None:
            executor.shutdown(wait=True)
        if (client := self._client.pop()) is not None:
            client.close()

    # --- Gateway ----------------------------------------------------------------------------------------
    def charge(self, request: ChargeRequest) -> ChargeOutcome:
        outcome = classification.preflight(request)
        if outcome is None:
            try:
                outcome = self._post_charge(request)
            except Exception as exc:  # a bug of ours, perhaps after the request left: never a guess
                outcome = classification.unexpected_error_outcome(exc)
        classification.log_outcome(logger, request, outcome)
        return outcome

    def charge_many(self, requests: Sequence[ChargeRequest]) -> list[ChargeOutcome]:
        if len(requests) <= 1:
            return [self.charge(request) for request in requests]
        # map() keeps the input order; charge() never raises, so one failure cannot lose the others' outcomes.
        return list(self._executor.get().map(self.charge, requests))

    def find_charge(self, idempotency_key: str) -> ChargeRecord | None:
        """The sandbox's ledger is strongly consistent: an empty answer proves no charge holds this key.

        The record may come from a *different* request that used the same key (the gateway answers 422
        ``idempotency_key_reused`` to the second one): callers reconciling a payment should compare
        ``amount``, ``currency`` and ``payment_id`` before trusting it.
        """
        client = self._client.get()
        try:
            response = client.get("/v1/charges", params={"idempotency_key": idempotency_key})
        except httpx.HTTPError as exc:
            raise GatewayLookupError(f"sandbox lookup failed: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise GatewayLookupError(f"sandbox lookup answered HTTP {response.status_code}")
        try:
            results = response.json()["results"]
            records = [_record_from_json(item) for item in results]
        except (ValueError, KeyError, TypeError, InvalidOperation) as exc:
            raise GatewayLookupError(f"sandbox lookup answered an unreadable body: {type(exc).__name__}") from exc
        matching = [record for record in records if record.idempotency_key == idempotency_key]
        if len(matching) > 1:  # the ledger's UNIQUE constraint forbids it: do not pick one
            raise GatewayLookupError(f"sandbox lookup found {len(matching)} charges for one idempotency key")
        return matching[0] if matching else None

    # --- internals ----------------------------------------------------------------------------------------
    def _post_charge(self, request: ChargeRequest) -> ChargeOutcome:
        body = {
            "amount": classification.major_units_text(request.amount, request.currency),
            "currency": request.currency,
            "payment_method": request.payment_method,
            "metadata": {"payment_id": request.payment_id},
        }
        client = self._client.get()
        try:
            response = client.post(
                "/v1/charges",
                content=json.dumps(body, separators=(",", ":")).encode(),
                headers={**_JSON_HEADERS, "Idempotency-Key": request.idempotency_key},
            )
        except httpx.HTTPError as exc:
            return classification.classify_transport_error(exc)
        try:
            data: Any = response.json()
        except ValueError:
            data = None
        return classification.classify_http_response(response.status_code, data, response.headers)


def _record_from_json(item: Any) -> ChargeRecord:
    status = item["status"]
    return ChargeRecord(
        reference=str(item["id"]),
        status=status,
        idempotency_key=str(item["idempotency_key"]),
        amount=Decimal(str(item["amount"])),
        currency=str(item["currency"]),
        payment_id=str(item.get("payment_id") or ""),
        failure_code=str(item.get("failure_code") or ""),
        failure_message=str(item.get("failure_message") or ""),
        raw_status=status,
    )
