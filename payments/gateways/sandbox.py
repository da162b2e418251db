"""The adapter for the sandbox gateway's HTTP API (``shared/spec/API.md``, "Sandbox gateway").

One ``urllib3`` connection pool with keep-alive connections per process, created on
first use: a Celery prefork child never inherits its parent's sockets. ``charge_many``
runs the requests on a thread pool over that pool (measured cheaper per charge than
``httpx`` on threads and than asyncio; see ``docs/gateways.md``). No retries here, not even
urllib3's own: the engine owns the retry policy, and every outcome is classified in
``classification.py``.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from decimal import Decimal, InvalidOperation
from json.encoder import encode_basestring_ascii
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

import urllib3
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from payments.gateways import classification
from payments.gateways.base import ChargeOutcome, ChargeRecord, ChargeRequest, GatewayLookupError, ProcessClient

logger = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT_SECONDS: Final = 2.0
# Threads per process = connections per process (docs/gateways.md, "measured"). The engine sends batches of
# EXECUTION_BATCH_SIZE = 50: with 64 a batch against a gateway with latency needs one round trip, not two,
# and urllib3's pool (a LIFO queue) costs the same per request at 64 connections as at 8.
DEFAULT_CONCURRENCY: Final = 64
# We drop a connection idle for longer than this before the server does (aiohttp's sandbox keeps them for an
# hour; proxies and other servers often for 5-75 s), so a request never goes out on a connection the server is
# closing at that moment: that would read as UNKNOWN. A connection whose close already reached us is replaced
# before anything is written (urllib3 checks the socket when it takes a connection from the pool).
KEEPALIVE_EXPIRY_SECONDS: Final = 4.0
USER_AGENT: Final = "scheduled-payments/1 (sandbox adapter)"
_CHARGE_HEADERS: Final = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": USER_AGENT}
_LOOKUP_HEADERS: Final = {"Accept": "application/json", "User-Agent": USER_AGENT}
# Never let urllib3 retry or follow anything on its own: one call, one request.
_ONE_REQUEST: Final[dict[str, Any]] = {"retries": False, "redirect": False, "assert_same_host": False}

PoolFactory = Callable[[], HTTPConnectionPool]


class KeepAlivePool(HTTPConnectionPool):
    """``HTTPConnectionPool`` that drops a connection left idle for longer than ``keepalive_expiry``.

    The dropped connection's object stays in the pool and reconnects when next used, before any byte of
    the next request is written: a replaced connection is provably not a sent request.
    """

    def __init__(self, *args: Any, keepalive_expiry: float = KEEPALIVE_EXPIRY_SECONDS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keepalive_expiry = keepalive_expiry
        self.expired_connections = 0  # for benchmarks and tests
        self._idle_since: dict[Any, float] = {}  # connection → when it went back into the pool

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)
        idle_since = self._idle_since.pop(conn, None)
        if idle_since is not None and time.monotonic() - idle_since > self.keepalive_expiry and not conn.is_closed:
            self.expired_connections += 1
            conn.close()
        return conn

    def _put_conn(self, conn: Any) -> None:
        if conn is not None and not conn.is_closed:
            self._idle_since[conn] = time.monotonic()
        super()._put_conn(conn)


class KeepAliveHTTPSPool(KeepAlivePool, HTTPSConnectionPool):
    """The same over TLS (the sandbox speaks plain HTTP; a gateway URL may still be ``https://``)."""


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
        pool_factory: PoolFactory | None = None,
    ) -> None:
        self.base_url = (base_url or settings.GATEWAY_URL).rstrip("/")
        self.timeout = float(settings.GATEWAY_TIMEOUT_SECONDS if timeout is None else timeout)
        self.connect_timeout = min(connect_timeout, self.timeout)
        self.concurrency = max(1, concurrency)
        url = urlsplit(self.base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ImproperlyConfigured(f"the sandbox gateway URL must be http(s)://host[:port], not {self.base_url!r}")
        self._scheme = url.scheme
        self._host = url.hostname
        self._port = url.port
        self._charges_path = f"{url.path}/v1/charges"
        # How long a request may wait for a free connection (whole seconds, urllib3's type). charge_many never
        # waits (one connection per thread); a find_charge from another thread during a batch may.
        self._pool_timeout = max(1, math.ceil(self.timeout))
        # charge_many runs on this thread and concurrency - 1 pool threads.
        self._per_process: ProcessClient[HTTPConnectionPool] = ProcessClient(
            pool_factory or self._new_pool,
            lambda pool: pool.close(),
            threads=self.concurrency - 1 or 1,
            thread_name_prefix="sandbox-gateway",
        )

    def _new_pool(self) -> HTTPConnectionPool:
        pool_class = KeepAliveHTTPSPool if self._scheme == "https" else KeepAlivePool
        return pool_class(
            self._host,
            self._port,
            timeout=urllib3.Timeout(connect=self.connect_timeout, read=self.timeout),
            maxsize=self.concurrency,
            block=True,  # never more connections than threads; a waiting request is not yet sent
            retries=False,
            keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS,
        )

    def close(self) -> None:
        """Close this process's connections and threads (tests, shutdown hooks)."""
        self._per_process.close()

    # --- Gateway ----------------------------------------------------------------------------------------
    def charge(self, request: ChargeRequest) -> ChargeOutcome:
        return classification.charge_outcome(logger, request, self._post_charge)

    def charge_many(self, requests: Sequence[ChargeRequest]) -> list[ChargeOutcome]:
        count = len(requests)
        if count <= 1:
            return [self.charge(request) for request in requests]
        # This thread and up to concurrency - 1 pool threads each take the next index from one queue until it
        # is empty: one task per thread rather than one future per charge (measurably cheaper, and the caller
        # works instead of waiting). ``charge`` never raises, so every index gets its outcome, in input order,
        # and one failure cannot lose the others'.
        outcomes: list[ChargeOutcome | None] = [None] * count
        pending: queue.SimpleQueue[int] = queue.SimpleQueue()
        for index in range(count):
            pending.put(index)

        def work() -> None:
            while True:
                try:
                    index = pending.get_nowait()
                except queue.Empty:
                    return
                outcomes[index] = self.charge(requests[index])

        helpers: list[Future[None]] = []
        executor = self._per_process.executor.get()
        for _ in range(min(self.concurrency, count) - 1):
            try:
                helpers.append(executor.submit(work))
            except RuntimeError:  # no thread to be had (shut down, resource limits): this thread does the rest
                break
        work()
        for helper in helpers:
            helper.result()
        return [self._settled(outcome) for outcome in outcomes]

    def find_charge(self, idempotency_key: str) -> ChargeRecord | None:
        """The sandbox's ledger is strongly consistent: an empty answer proves no charge holds this key.

        The record may come from a *different* request that used the same key (the gateway answers 422
        ``idempotency_key_reused`` to the second one): callers reconciling a payment should compare
        ``amount``, ``currency`` and ``payment_id`` before trusting it.
        """
        url = f"{self._charges_path}?{urlencode({'idempotency_key': idempotency_key})}"
        try:
            response = self._per_process.client.get().urlopen(
                "GET", url, headers=_LOOKUP_HEADERS, pool_timeout=self._pool_timeout, **_ONE_REQUEST
            )
        except urllib3.exceptions.HTTPError as exc:
            raise GatewayLookupError(f"sandbox lookup failed: {type(exc).__name__}") from exc
        if response.status != 200:
            raise GatewayLookupError(f"sandbox lookup answered HTTP {response.status}")
        try:
            results = json.loads(response.data or b"")["results"]
            records = [_record_from_json(item) for item in results]
        except (ValueError, KeyError, TypeError, InvalidOperation) as exc:
            raise GatewayLookupError(f"sandbox lookup answered an unreadable body: {type(exc).__name__}") from exc
        matching = [record for record in records if record.idempotency_key == idempotency_key]
        if len(matching) > 1:  # the ledger's UNIQUE constraint forbids it: do not pick one
            raise GatewayLookupError(f"sandbox lookup found {len(matching)} charges for one idempotency key")
        return matching[0] if matching else None

    # --- internals ----------------------------------------------------------------------------------------
    def _post_charge(self, request: ChargeRequest) -> ChargeOutcome:
        body = charge_body(request)
        headers = {**_CHARGE_HEADERS, "Idempotency-Key": request.idempotency_key}
        try:
            response = self._per_process.client.get().urlopen(
                "POST", self._charges_path, body=body, headers=headers, pool_timeout=self._pool_timeout, **_ONE_REQUEST
            )
        except urllib3.exceptions.HTTPError as exc:
            return classification.classify_urllib3_error(exc)
        raw = response.data  # bytes, or None (despite its annotation) for an empty body
        try:
            data: Any = json.loads(raw) if raw else None
        except ValueError:  # not JSON, or not UTF-8
            data = None
        return classification.classify_http_response(response.status, data, response.headers)

    @staticmethod
    def _settled(outcome: ChargeOutcome | None) -> ChargeOutcome:
        if outcome is None:  # cannot happen (every index is taken exactly once): never a guess if it does
            return classification.unexpected_error_outcome(RuntimeError("charge_many lost an outcome"))
        return outcome


def charge_body(request: ChargeRequest) -> bytes:
    """The contract's JSON body, byte for byte what ``json.dumps(..., separators=(",", ":"))`` writes."""
    amount = classification.major_units_text(request.amount, request.currency)
    return (
        f'{{"amount":{encode_basestring_ascii(amount)},"currency":{encode_basestring_ascii(request.currency)},'
        f'"payment_method":{encode_basestring_ascii(request.payment_method)},'
        f'"metadata":{{"payment_id":{encode_basestring_ascii(request.payment_id)}}}}}'
    ).encode("ascii")


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
