"""The sandbox gateway's HTTP server (aiohttp) and command line.

Everything runs on one event loop: request handlers call the SQLite ledger
synchronously (sub-millisecond), which keeps per-request work small and makes
each charge atomic with respect to every other request.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import json
import logging
import os
import random
import re
import secrets
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler

from sandbox_gateway.faults import FaultInjector, FaultSettings, InvalidFaults
from sandbox_gateway.ledger import Charge, ChargeRequest, IdempotencyKeyReused, Ledger

PROJECT_ROOT: Final = Path(__file__).resolve().parents[2]
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8700
DEFAULT_DATA_DIR: Final = PROJECT_ROOT / "var" / "gateway"
DEFAULT_HANG_SECONDS: Final = 60.0
MAX_BODY_BYTES: Final = 64 * 1024
# How often a hanging request checks whether its client has given up.
_HANG_POLL_SECONDS: Final = 0.1

logger = logging.getLogger("sandbox_gateway")

_AMOUNT_RE: Final = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,6})?")
_CURRENCY_RE: Final = re.compile(r"[A-Z]{3}")
_KEY_RE: Final = re.compile(r"[\x20-\x7e]{1,255}")  # printable ASCII, as the service's own API
_REQUEST_ID_RE: Final = re.compile(r"[\x21-\x7e]{1,200}")
_MAX_TOKEN_LENGTH: Final = 255


class ErrorCode(enum.StrEnum):
    """The gateway's machine-readable problem codes (stable: clients branch on them)."""

    MALFORMED_REQUEST = "malformed_request"
    IDEMPOTENCY_KEY_REQUIRED = "idempotency_key_required"
    IDEMPOTENCY_KEY_INVALID = "idempotency_key_invalid"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    INVALID_AMOUNT = "invalid_amount"
    INVALID_CURRENCY = "invalid_currency"
    INVALID_PAYMENT_METHOD = "invalid_payment_method"
    INVALID_METADATA = "invalid_metadata"
    INVALID_FAULTS = "invalid_faults"
    FILTER_REQUIRED = "filter_required"
    CONFIRMATION_REQUIRED = "confirmation_required"
    GATEWAY_UNAVAILABLE = "gateway_unavailable"
    GATEWAY_TIMEOUT = "gateway_timeout"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    REQUEST_TOO_LARGE = "request_too_large"
    HTTP_ERROR = "http_error"


_CODE_FOR_STATUS: Final = {
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.REQUEST_TOO_LARGE,
}


def json_response(data: Any, status: int = 200, content_type: str = "application/json") -> web.Response:
    body = json.dumps(data, separators=(",", ":")).encode()
    return web.Response(body=body, status=status, content_type=content_type)


def problem_response(status: int, code: str, detail: str) -> web.Response:
    """An RFC 9457 problem; ``about:blank`` type, so the title is the status phrase."""
    problem = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
    }
    return json_response(problem, status, "application/problem+json")


class Problem(Exception):
    """Raised anywhere in a handler; the middleware answers it as problem+json."""

    def __init__(self, status: int, code: ErrorCode, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


def parse_charge_request(body: object) -> ChargeRequest:
    """Validate a charge body. Details never echo a submitted value (it may be a token)."""
    if not isinstance(body, dict):
        raise Problem(400, ErrorCode.MALFORMED_REQUEST, "The body must be a JSON object.")
    amount = body.get("amount")
    if not isinstance(amount, str) or not _AMOUNT_RE.fullmatch(amount) or Decimal(amount) <= 0:
        raise Problem(400, ErrorCode.INVALID_AMOUNT, 'amount must be a decimal string greater than 0, e.g. "125.50".')
    currency = body.get("currency")
    if not isinstance(currency, str) or not _CURRENCY_RE.fullmatch(currency):
        raise Problem(400, ErrorCode.INVALID_CURRENCY, "currency must be 3 uppercase letters (ISO 4217).")
    payment_method = body.get("payment_method")
    if not isinstance(payment_method, str) or not payment_method.strip() or len(payment_method) > _MAX_TOKEN_LENGTH:
        raise Problem(
            400, ErrorCode.INVALID_PAYMENT_METHOD, "payment_method must be a non-empty token of at most 255 characters."
        )
    metadata = body.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise Problem(400, ErrorCode.INVALID_METADATA, "metadata must be a JSON object.")
    payment_id = metadata.get("payment_id")
    if payment_id is not None and (
        not isinstance(payment_id, str) or not payment_id or len(payment_id) > _MAX_TOKEN_LENGTH
    ):
        raise Problem(400, ErrorCode.INVALID_METADATA, "metadata.payment_id must be a string of 1 to 255 characters.")
    return ChargeRequest(
        amount=Decimal(amount),
        currency=currency,
        payment_method=payment_method,
        payment_id=payment_id,
        metadata=metadata,
    )


async def _read_json(request: web.Request) -> object:
    raw = await request.read()
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise Problem(400, ErrorCode.MALFORMED_REQUEST, "The body is not valid JSON.") from None


def _charge_response(charge: Charge, created: bool) -> web.Response:
    response = json_response(charge.as_json(), 201 if created else 200)
    if created:
        response.headers["Location"] = f"/v1/charges/{charge.id}"
    else:
        response.headers["Idempotent-Replayed"] = "true"
    return response


class Gateway:
    """The HTTP handlers, bound to one ledger and one fault injector."""

    def __init__(self, ledger: Ledger, faults: FaultInjector, hang_seconds: float = DEFAULT_HANG_SECONDS) -> None:
        self.ledger = ledger
        self.faults = faults
        self.hang_seconds = hang_seconds
        # Set on shutdown so hanging requests let go at once instead of holding the stop up.
        self.stopping = False

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/healthz", self.healthz),
            web.post("/v1/charges", self.create_charge),
            web.get("/v1/charges", self.list_charges),
            web.get("/v1/charges/{charge_id}", self.get_charge),
            web.get("/v1/faults", self.get_faults),
            web.put("/v1/faults", self.put_faults),
            web.patch("/v1/faults", self.patch_faults),
            web.delete("/v1/faults", self.delete_faults),
            web.get("/v1/stats", self.stats),
            web.post("/v1/admin/reset", self.admin_reset),
        ]

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def create_charge(self, request: web.Request) -> web.StreamResponse:
        key = request.headers.get("Idempotency-Key", "")
        if not key:
            raise Problem(400, ErrorCode.IDEMPOTENCY_KEY_REQUIRED, "The Idempotency-Key header is required.")
        if not _KEY_RE.fullmatch(key):
            raise Problem(
                400, ErrorCode.IDEMPOTENCY_KEY_INVALID, "Idempotency-Key must be 1 to 255 printable ASCII characters."
            )
        charge_request = parse_charge_request(await _read_json(request))

        # One snapshot per request: a drill changing faults mid-flight affects only later requests.
        faults = self.faults.settings
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        if self.faults.roll(faults.error_rate):
            self._note(request, "error")
            raise Problem(
                503, ErrorCode.GATEWAY_UNAVAILABLE, "The gateway is temporarily unavailable; nothing was charged."
            )
        if self.faults.roll(faults.timeout_rate):
            self._note(request, "timeout")
            return await self._hang(request)

        try:
            charge, created = self.ledger.charge(key, charge_request)
        except IdempotencyKeyReused:
            raise Problem(
                422,
                ErrorCode.IDEMPOTENCY_KEY_REUSED,
                "This Idempotency-Key was already used with a different request.",
            ) from None

        if self.faults.roll(faults.drop_response_rate):
            self._note(request, "drop")
            return self._drop(request)
        return _charge_response(charge, created)

    def _note(self, request: web.Request, fault: str) -> None:
        self.faults.injected[fault] += 1
        request["fault"] = fault

    async def _hang(self, request: web.Request) -> web.StreamResponse:
        """Hang without charging until the client gives up (or, at worst, ``hang_seconds`` pass)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.hang_seconds
        while loop.time() < deadline:
            transport = request.transport
            if transport is None or transport.is_closing():
                # The client is gone; this response is never written (aiohttp swallows the ConnectionError).
                return web.Response(status=499)
            if self.stopping:
                return self._drop(request)  # nothing was charged; the client sees a closed connection
            await asyncio.sleep(_HANG_POLL_SECONDS)
        return problem_response(504, ErrorCode.GATEWAY_TIMEOUT, "The gateway timed out; nothing was charged.")

    @staticmethod
    def _drop(request: web.Request) -> web.StreamResponse:
        """Close the connection with nothing written: the client sees a dropped connection."""
        transport = request.transport
        if transport is not None:
            transport.close()
        # Writing to the closing transport raises ConnectionError, which aiohttp treats as a client
        # disconnect: no bytes reach the client and nothing is logged as an error.
        return web.Response(status=204)

    async def list_charges(self, request: web.Request) -> web.Response:
        key = request.query.get("idempotency_key")
        payment_id = request.query.get("payment_id")
        charges: list[Charge]
        if key is not None:
            charge = self.ledger.by_idempotency_key(key)
            charges = [] if charge is None or (payment_id is not None and charge.payment_id != payment_id) else [charge]
        elif payment_id is not None:
            charges = self.ledger.by_payment_id(payment_id)
        else:
            raise Problem(400, ErrorCode.FILTER_REQUIRED, "Give idempotency_key or payment_id (or both).")
        return json_response({"results": [charge.as_json() for charge in charges]})

    async def get_charge(self, request: web.Request) -> web.Response:
        charge = self.ledger.by_id(request.match_info["charge_id"])
        if charge is None:
            raise Problem(404, ErrorCode.NOT_FOUND, "No such charge.")
        return json_response(charge.as_json())

    async def get_faults(self, request: web.Request) -> web.Response:
        return json_response(self.faults.settings.as_json())

    async def put_faults(self, request: web.Request) -> web.Response:
        """Replace the settings: fields left out are reset to zero."""
        return self._set_faults(FaultSettings(), await _read_json(request))

    async def patch_faults(self, request: web.Request) -> web.Response:
        """Change only the fields given (an extension)."""
        return self._set_faults(self.faults.settings, await _read_json(request))

    async def delete_faults(self, request: web.Request) -> web.Response:
        return self._set_faults(FaultSettings(), {})

    def _set_faults(self, base: FaultSettings, data: object) -> web.Response:
        try:
            settings = base.updated(data)
        except InvalidFaults as exc:
            raise Problem(400, ErrorCode.INVALID_FAULTS, str(exc)) from None
        if settings != self.faults.settings:
            logger.info("faults set: %s", json.dumps(settings.as_json()))
        self.faults.settings = settings
        return json_response(settings.as_json())

    async def stats(self, request: web.Request) -> web.Response:
        counts = self.ledger.stats
        return json_response(
            {
                "total": counts.total,
                "succeeded": counts.succeeded,
                "declined": counts.declined,
                "faults_injected": self.faults.stats(),
            }
        )

    async def admin_reset(self, request: web.Request) -> web.Response:
        if request.query.get("confirm") != "yes":
            raise Problem(400, ErrorCode.CONFIRMATION_REQUIRED, "Add ?confirm=yes to delete every charge.")
        deleted = self.ledger.reset()
        self.faults.injected = dict.fromkeys(self.faults.injected, 0)
        logger.info("ledger reset: %d charges deleted", deleted)
        return json_response({"deleted": deleted})


def _make_middleware(debug: bool) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter() if debug else 0.0
        try:
            response = await handler(request)
        except Problem as exc:
            response = problem_response(exc.status, exc.code, exc.detail)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = _CODE_FOR_STATUS.get(exc.status, ErrorCode.HTTP_ERROR)
            response = problem_response(exc.status, code, exc.reason)
            if "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
        request_id = request.headers.get("X-Request-ID", "")
        if not _REQUEST_ID_RE.fullmatch(request_id):
            request_id = "req_" + secrets.token_hex(8)
        response.headers["X-Request-ID"] = request_id
        if debug:
            # No query string and no body: never a payment method token in the log.
            fault = request.get("fault")
            logger.debug(
                "%s %s %s %.1fms%s",
                request.method,
                request.path,
                "-" if fault in ("drop", "timeout") else response.status,
                (time.perf_counter() - started) * 1000,
                f" fault={fault}" if fault else "",
            )
        return response

    return middleware


def create_app(ledger: Ledger, faults: FaultInjector, hang_seconds: float = DEFAULT_HANG_SECONDS) -> web.Application:
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[_make_middleware(logger.isEnabledFor(logging.DEBUG))],
    )
    gateway = Gateway(ledger, faults, hang_seconds)
    app.add_routes(gateway.routes())

    async def release_hanging_requests(_app: web.Application) -> None:
        gateway.stopping = True

    async def close_ledger(_app: web.Application) -> None:
        ledger.close()

    app.on_shutdown.append(release_hanging_requests)
    app.on_cleanup.append(close_ledger)
    return app


@dataclass(frozen=True, slots=True)
class Config:
    host: str
    port: int
    data_dir: Path
    faults: FaultSettings
    seed: str | None
    hang_seconds: float


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT, then close connections and the ledger."""
    ledger = Ledger(config.data_dir)
    rng = random.Random(config.seed) if config.seed is not None else random.Random()
    app = create_app(ledger, FaultInjector(config.faults, rng), config.hang_seconds)
    # access_log=None: no per-request INFO lines. A short shutdown_timeout: in-flight charges finish in
    # milliseconds, and only a long latency_ms fault could hold the stop up.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port, backlog=1024)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        logger.info(
            "sandbox gateway listening on http://%s:%d (ledger %s, %d charges, faults %s)",
            config.host,
            config.port,
            ledger.path,
            ledger.stats.total,
            json.dumps(config.faults.as_json()),
        )
        await stop.wait()
        logger.info("sandbox gateway shutting down")
    finally:
        await runner.cleanup()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise SystemExit(f"{name} must be an integer") from None


def parse_config(argv: Sequence[str] | None = None) -> tuple[Config, str]:
    parser = argparse.ArgumentParser(prog="python -m sandbox_gateway", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("GATEWAY_HOST") or DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=_env_int("GATEWAY_PORT", DEFAULT_PORT))
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("GATEWAY_DATA_DIR") or DEFAULT_DATA_DIR))
    parser.add_argument(
        "--log-level",
        default=os.environ.get("GATEWAY_LOG_LEVEL") or "INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be between 0 and 65535")

    faults = FaultSettings()
    if raw_faults := os.environ.get("GATEWAY_FAULTS"):
        try:
            faults = faults.updated(json.loads(raw_faults))
        except ValueError as exc:  # InvalidFaults and JSONDecodeError are both ValueErrors
            parser.error(f"GATEWAY_FAULTS: {exc}")
    try:
        hang_seconds = float(os.environ.get("GATEWAY_HANG_SECONDS") or DEFAULT_HANG_SECONDS)
    except ValueError:
        parser.error("GATEWAY_HANG_SECONDS must be a number")
    config = Config(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        faults=faults,
        seed=os.environ.get("GATEWAY_FAULT_SEED") or None,
        hang_seconds=hang_seconds,
    )
    return config, str(args.log_level)


def main(argv: Sequence[str] | None = None) -> int:
    config, log_level = parse_config(argv)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # aiohttp's own loggers stay at INFO or above even in DEBUG: our middleware writes the one line per request.
    for noisy in ("aiohttp", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLevelName(log_level)))
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        logger.error("sandbox gateway could not start: %s", exc)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        return 130
    return 0
