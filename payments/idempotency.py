"""Stripe-style ``Idempotency-Key`` handling for unsafe API requests.

A client retrying a request it is unsure about (timeout, dropped connection)
must never create a second payment. The protocol, per user and key:

1. The key is claimed by inserting an ``IdempotencyRecord`` (state ``in_flight``)
   in its own, committed transaction. The ``(user, key)`` unique constraint
   makes exactly one of several parallel requests win; the losers re-read.
2. The winner does the work and marks the record ``done`` with the response in
   ONE transaction, guarded on ``(id, state=in_flight, locked_until=<its own
   value>)``: if the claim was taken over meanwhile, the guard matches no row,
   and the work is rolled back.
3. Later requests with the key: same fingerprint and ``done`` → the stored
   response again (``Idempotent-Replayed: true``); a different fingerprint →
   422 ``idempotency_key_reused``; ``in_flight`` and still locked → 409
   ``idempotency_key_in_use``; ``in_flight`` past ``locked_until`` (its request
   died) → taken over with a guarded UPDATE, and the work runs again.
4. A failed request (a ``ProblemError`` such as a validation error, or an
   unexpected exception) deletes its claim: as at Stripe, only requests that did
   their work are stored, so the client may fix the body and retry with the key.

All times come from the database clock (``selectors.database_now``) so web
processes with skewed clocks agree on whether a claim is stale.

The stored response is the exact rendered JSON text plus headers (``{"content":
..., "headers": {...}}`` in ``response_body``): a replay is byte-for-byte the
original, whatever the database does to JSON key order.

Use ``idempotent_execute`` outside any transaction: the claim must be committed
before the work starts, or parallel requests could not see it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.http import HttpRequest, HttpResponse
from rest_framework.renderers import JSONRenderer

from accounts.models import User

from . import selectors
from .error_codes import ErrorCode, ProblemError
from .models import IdempotencyRecord

logger = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
# 1-255 printable ASCII characters (space to tilde).
_KEY_PATTERN = re.compile(r"[\x20-\x7e]{1,255}")
# Each round either returns, raises, or saw the record change under it (a parallel
# request claimed, finished or released the key); more rounds than this means churn.
_MAX_ROUNDS = 5


@dataclass(frozen=True)
class WorkResult:
    """What the protected work answers: status, JSON body, extra headers, and the payment it made."""

    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)
    payment: models.Model | None = None


@dataclass(frozen=True)
class StoredResponse:
    status: int
    content: bytes
    headers: Mapping[str, str]
    replayed: bool

    def as_http_response(self) -> HttpResponse:
        response = HttpResponse(self.content, status=self.status, content_type="application/json")
        for name, value in self.headers.items():
            response[name] = value
        if self.replayed:
            response[REPLAYED_HEADER] = "true"
        return response


@dataclass(frozen=True)
class _Claim:
    record_id: int
    locked_until: datetime


class _ClaimLost(Exception):
    """Our in-flight claim was taken over while we worked: our work must not commit."""


def idempotency_key_from(request: HttpRequest) -> str:
    """The request's ``Idempotency-Key``, or 400 ``idempotency_key_required`` / ``idempotency_key_invalid``."""
    raw = request.headers.get(IDEMPOTENCY_HEADER)
    if not raw:
        raise ProblemError(
            ErrorCode.IDEMPOTENCY_KEY_REQUIRED,
            400,
            "The Idempotency-Key header is required: send a unique value (e.g. a UUID) per payment, "
            "and the same value when you retry it.",
        )
    if not _KEY_PATTERN.fullmatch(raw):
        raise ProblemError(
            ErrorCode.IDEMPOTENCY_KEY_INVALID,
            400,
            "The Idempotency-Key header must be 1-255 printable ASCII characters.",
        )
    return raw


def request_fingerprint(method: str, path: str, body: Any) -> str:
    """SHA-256 of the method, path and canonical JSON body: what "the same request" means."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    digest = hashlib.sha256()
    for part in (method.upper(), path, canonical):
        digest.update(part.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def idempotent_execute(*, user: User, key: str, fingerprint: str, work: Callable[[], WorkResult]) -> StoredResponse:
    """Run ``work`` at most once per ``(user, key)``; see the module doc for the protocol.

    ``work`` runs inside the transaction that marks the key done, so whatever it
    writes commits if and only if the key's response is stored. Raises
    ``ProblemError`` for the idempotency conflicts and whatever ``work`` raises.
    """
    for _ in range(_MAX_ROUNDS):
        now = selectors.database_now()
        record = IdempotencyRecord.objects.filter(user=user, key=key).first()
        claim: _Claim | None
        if record is None:
            claim = _claim_new(user=user, key=key, fingerprint=fingerprint, now=now)
        else:
            if record.expires_at <= now:
                # Past retention but not purged yet: the key is free again.
                IdempotencyRecord.objects.filter(pk=record.pk, expires_at__lte=now).delete()
                continue
            if record.fingerprint != fingerprint:
                raise ProblemError(
                    ErrorCode.IDEMPOTENCY_KEY_REUSED,
                    422,
                    "This Idempotency-Key was already used with a different request; use a new key for a new payment.",
                )
            if record.state == IdempotencyRecord.State.DONE:
                return _replay(record)
            if record.locked_until > now:
                raise _in_use()
            claim = _take_over(record, now=now)
        if claim is not None:
            return _perform(claim, work)
    raise _in_use()


def _in_use() -> ProblemError:
    return ProblemError(
        ErrorCode.IDEMPOTENCY_KEY_IN_USE,
        409,
        "A request with this Idempotency-Key is still being processed; retry shortly.",
        headers={"Retry-After": "1"},
    )


def _claim_new(*, user: User, key: str, fingerprint: str, now: datetime) -> _Claim | None:
    locked_until = now + settings.IDEMPOTENCY_IN_FLIGHT_TIMEOUT
    try:
        with transaction.atomic():
            record = IdempotencyRecord.objects.create(
                user=user,
                key=key,
                fingerprint=fingerprint,
                state=IdempotencyRecord.State.IN_FLIGHT,
                locked_until=locked_until,
                created_at=now,
                expires_at=now + settings.IDEMPOTENCY_KEY_RETENTION,
            )
    except IntegrityError:
        return None  # a parallel request claimed the key first: look again
    return _Claim(record_id=record.pk, locked_until=locked_until)


def _take_over(record: IdempotencyRecord, *, now: datetime) -> _Claim | None:
    """Claim a stale in-flight record, guarded on the lock value we saw (one taker wins)."""
    locked_until = now + settings.IDEMPOTENCY_IN_FLIGHT_TIMEOUT
    taken = IdempotencyRecord.objects.filter(
        pk=record.pk, state=IdempotencyRecord.State.IN_FLIGHT, locked_until=record.locked_until
    ).update(locked_until=locked_until, expires_at=now + settings.IDEMPOTENCY_KEY_RETENTION)
    if taken != 1:
        return None
    logger.warning("idempotency: took over a stale in-flight claim record=%s", record.pk)
    return _Claim(record_id=record.pk, locked_until=locked_until)


def _perform(claim: _Claim, work: Callable[[], WorkResult]) -> StoredResponse:
    try:
        with transaction.atomic():
            result = work()
            content = JSONRenderer().render(result.body)
            headers = dict(result.headers)
            finished = IdempotencyRecord.objects.filter(
                pk=claim.record_id, state=IdempotencyRecord.State.IN_FLIGHT, locked_until=claim.locked_until
            ).update(
                state=IdempotencyRecord.State.DONE,
                response_status=result.status,
                response_body={"content": content.decode("utf-8"), "headers": headers},
                payment=result.payment,
            )
            if finished != 1:
                raise _ClaimLost()
    except _ClaimLost:
        # Another request took the key over after our lock expired; it owns the outcome.
        logger.warning("idempotency: claim lost while working, work rolled back record=%s", claim.record_id)
        raise _in_use() from None
    except BaseException:
        _release(claim)
        raise
    return StoredResponse(status=result.status, content=content, headers=headers, replayed=False)


def _release(claim: _Claim) -> None:
    """Delete our claim after a failure, so a corrected retry may use the key."""
    try:
        IdempotencyRecord.objects.filter(
            pk=claim.record_id, state=IdempotencyRecord.State.IN_FLIGHT, locked_until=claim.locked_until
        ).delete()
    except Exception:
        # The claim then blocks the key until locked_until, after which a retry takes it over.
        logger.exception("idempotency: could not release claim record=%s", claim.record_id)


def _replay(record: IdempotencyRecord) -> StoredResponse:
    stored = record.response_body
    if isinstance(stored, dict) and isinstance(stored.get("content"), str):
        content = stored["content"].encode("utf-8")
        headers = {str(k): str(v) for k, v in (stored.get("headers") or {}).items()}
    else:  # defensive: a body stored as plain JSON
        content = JSONRenderer().render(stored)
        headers = {}
    assert record.response_status is not None
    return StoredResponse(status=record.response_status, content=content, headers=headers, replayed=True)
