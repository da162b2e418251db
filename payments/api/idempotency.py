"""Stripe-style ``Idempotency-Key`` handling for unsafe API requests.

A client retrying a request it is unsure about (timeout, dropped connection)
must never create a second payment. Per user and key, everything happens in ONE
database transaction, together with the work the key protects:

1. The key is locked for the transaction without waiting (a transaction-scoped
   advisory lock on a hash of user and key). If another request holds it, that
   request is still in flight: 409 ``idempotency_key_in_use`` with ``Retry-After``.
2. The key's stored record, if any: same fingerprint → the stored response again
   (``Idempotent-Replayed: true``); a different fingerprint → 422
   ``idempotency_key_reused``; past ``expires_at`` → deleted, the key is free again.
3. Otherwise the work runs, and the record holding its rendered response is
   inserted in the same transaction: the payment and its key commit together or
   not at all. The ``(user, key)`` unique constraint is the last guard: if a
   parallel request committed the key between our look-up and our insert, the
   insert fails, everything we did rolls back, and the stored response answers.
   Only that constraint means "key taken": any other integrity error is a 500, logged.
4. A failed request (a ``ProblemError`` such as a validation error, or an
   unexpected exception) rolls back and stores nothing: as at Stripe, only requests
   that did their work are kept, so the client may fix the body and retry.

Why one transaction: the protected work is database-only (no gateway is ever
called while a request is handled), so there is no outcome outside the database
to remember before it is known. A request that dies leaves nothing behind (no
stale claim to expire or take over), and a create costs a third of the round
trips a separately committed claim needed.

The key itself is never stored, nor refused for what it holds: records keep its HMAC
under ``FIELD_HMAC_KEY`` (``crypto.idempotency_key_hmac``), looked up under the current
and any ``FIELD_HMAC_PREVIOUS_KEYS``, so a key holding a card number is not kept either.

All times come from the database clock (``selectors.database_now``), one reading
per request, shared with the work, so web processes with skewed clocks agree.

The stored response is the exact rendered JSON text plus headers (``{"content":
..., "headers": {...}}`` in ``response_body``): a replay is byte-for-byte the
original, whatever the database does to JSON key order.

Call ``idempotent_execute`` outside any transaction: it opens its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, models, transaction
from django.http import HttpRequest, HttpResponse
from rest_framework.renderers import JSONRenderer

from accounts.models import User
from common.crypto import idempotency_key_hmac, idempotency_key_hmacs
from common.error_codes import ErrorCode, ProblemError
from payments import selectors
from payments.models import IdempotencyRecord

from . import contract

logger = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
# 1-255 printable ASCII characters (space to tilde).
# Each round either returns, raises, or lost the key to a parallel request (and then
# replays it in the next); more rounds than this means churn.
_MAX_ROUNDS = 5
# pg_try_advisory_xact_lock(namespace, hash): apart from payment_create's per-user locks.
_KEY_LOCK_NAMESPACE = zlib.crc32(b"payments.idempotency_key") & 0x7FFFFFFF


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


class _KeyTaken(Exception):
    """A parallel request stored this key between our look-up and our insert."""


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
    if not contract.IDEMPOTENCY_KEY_PATTERN.fullmatch(raw):
        raise ProblemError(
            ErrorCode.IDEMPOTENCY_KEY_INVALID,
            400,
            "The Idempotency-Key header must be 1-255 printable ASCII characters.",
        )
    # Never refused for what it holds (digits that look like a card included): it is not stored,
    # only its HMAC is (IdempotencyRecord.key_hmac).
    return raw


def request_fingerprint(method: str, path: str, body: Any) -> str:
    """SHA-256 of the method, path and canonical JSON body: what "the same request" means."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    digest = hashlib.sha256()
    for part in (method.upper(), path, canonical):
        digest.update(part.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def idempotent_execute(
    *, user: User, key: str, fingerprint: str, work: Callable[[datetime], WorkResult]
) -> StoredResponse:
    """Run ``work(now)`` at most once per ``(user, key)``; see the module doc for the protocol.

    ``work`` runs inside the transaction that stores the key's response, so whatever
    it writes commits if and only if the response is stored; ``now`` is the
    database's clock. Raises ``ProblemError`` for the idempotency conflicts and
    whatever ``work`` raises.
    """
    for _ in range(_MAX_ROUNDS):
        try:
            with transaction.atomic():
                if not _try_lock_key(user.pk, key):
                    raise _in_use()
                now = selectors.database_now()
                record = IdempotencyRecord.objects.filter(user=user, key_hmac__in=idempotency_key_hmacs(key)).first()
                if record is not None and record.expires_at <= now:
                    # Past retention but not purged yet: the key is free again.
                    record.delete()
                    record = None
                if record is not None:
                    if record.fingerprint != fingerprint:
                        raise ProblemError(
                            ErrorCode.IDEMPOTENCY_KEY_REUSED,
                            422,
                            "This Idempotency-Key was already used with a different request; "
                            "use a new key for a new payment.",
                        )
                    return _replay(record)
                return _perform(user=user, key=key, fingerprint=fingerprint, now=now, work=work)
        except _KeyTaken:
            # A parallel request stored this key first; our work is rolled back. Look again.
            continue
    raise _in_use()


def idempotency_lock_id(user_id: int, key: str) -> tuple[int, int]:
    """The two-int advisory lock of ``(user, key)``: a namespace, and 32 bits of SHA-256 of both.

    Two keys in flight at once share a lock once in 4 billion pairs; the later one
    is then answered 409 and retried by its client, nothing worse.
    """
    digest = hashlib.sha256(f"{user_id}:{key}".encode()).digest()
    return _KEY_LOCK_NAMESPACE, int.from_bytes(digest[:4], "big", signed=True)


def _try_lock_key(user_id: int, key: str) -> bool:
    """Lock the key until the transaction ends, without waiting; False when another request holds it."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", idempotency_lock_id(user_id, key))
        row = cursor.fetchone()
    return bool(row and row[0])


def _in_use() -> ProblemError:
    return ProblemError(
        ErrorCode.IDEMPOTENCY_KEY_IN_USE,
        409,
        "A request with this Idempotency-Key is still being processed; retry shortly.",
        headers={"Retry-After": "1"},
    )


def _perform(
    *, user: User, key: str, fingerprint: str, now: datetime, work: Callable[[datetime], WorkResult]
) -> StoredResponse:
    """Do the work and store its response, in the caller's transaction."""
    result = work(now)
    content = JSONRenderer().render(result.body)
    headers = dict(result.headers)
    try:
        # No savepoint: a duplicate key must abort the whole transaction (through _KeyTaken).
        IdempotencyRecord.objects.create(
            user=user,
            key_hmac=idempotency_key_hmac(key),
            fingerprint=fingerprint,
            response_status=result.status,
            response_body={"content": content.decode("utf-8"), "headers": headers},
            payment_id=result.payment.pk if result.payment is not None else None,
            created_at=now,
            expires_at=now + settings.IDEMPOTENCY_KEY_RETENTION,
        )
    except IntegrityError as error:
        if not _violates_key_constraint(error):
            # Any other constraint is a bug, not a race: answer 500 once, never re-run the work.
            logger.error("idempotency: storing the response broke a constraint user=%s", user.pk, exc_info=True)
            raise
        logger.info("idempotency: key stored by a parallel request, work rolled back user=%s", user.pk)
        raise _KeyTaken() from None
    return StoredResponse(status=result.status, content=content, headers=headers, replayed=False)


_KEY_CONSTRAINT = "idempotency_user_key_unique"


def _violates_key_constraint(error: IntegrityError) -> bool:
    """True only for the ``(user, key_hmac)`` unique constraint: a parallel request stored the key."""
    cause = error.__cause__
    diag = getattr(cause, "diag", None)
    if diag is not None:  # PostgreSQL (psycopg) names the constraint
        return bool(getattr(diag, "constraint_name", None) == _KEY_CONSTRAINT)
    # SQLite names the columns: "UNIQUE constraint failed: payments_idempotencyrecord.user_id, ....key_hmac"
    message = str(error)
    return message.startswith("UNIQUE constraint failed") and "payments_idempotencyrecord.key_hmac" in message


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
