"""The gateway's ledger of charges, kept in SQLite (the single source of truth).

One connection, used only from the event loop's thread. Every call here is
synchronous and contains no ``await``, so a check-then-insert can never
interleave with another request; the UNIQUE constraint on ``idempotency_key``
guarantees one charge per key even so.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

DB_FILENAME: Final = "ledger.sqlite3"
DECLINE_SUFFIX: Final = "_decline"
DECLINE_CODE: Final = "card_declined"
DECLINE_MESSAGE: Final = "The payment method was declined."

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS charges (
    seq             INTEGER PRIMARY KEY,  -- insertion order: "oldest first"
    id              TEXT NOT NULL UNIQUE,
    idempotency_key TEXT NOT NULL UNIQUE,
    request_hash    TEXT NOT NULL,        -- detects a key reused with another body
    status          TEXT NOT NULL,
    amount          TEXT NOT NULL,
    currency        TEXT NOT NULL,
    payment_id      TEXT,
    metadata        TEXT NOT NULL,
    created         TEXT NOT NULL,
    failure_code    TEXT,
    failure_message TEXT
);
CREATE INDEX IF NOT EXISTS charges_payment_id ON charges (payment_id);
"""

_COLUMNS: Final = (
    "id, idempotency_key, request_hash, status, amount, currency, payment_id, metadata, created, "
    "failure_code, failure_message"
)
# ON CONFLICT DO NOTHING: the common path (a new key) is one statement; rowcount tells us who won.
# S608: only the constant column list is interpolated; every value is a bound parameter.
_INSERT: Final = f"INSERT INTO charges ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING"  # noqa: S608
_BY_KEY: Final = f"SELECT {_COLUMNS} FROM charges WHERE idempotency_key = ?"  # noqa: S608
_BY_ID: Final = f"SELECT {_COLUMNS} FROM charges WHERE id = ?"  # noqa: S608
_BY_PAYMENT_ID: Final = f"SELECT {_COLUMNS} FROM charges WHERE payment_id = ? ORDER BY seq"  # noqa: S608


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    """A validated ``POST /v1/charges`` body."""

    amount: Decimal
    currency: str
    payment_method: str
    payment_id: str | None
    metadata: Mapping[str, Any]

    def fingerprint(self) -> str:
        """What must match for a replayed key: amount (by value), currency, payment method, payment id.

        Only a hash is kept, so the ledger never stores payment method tokens.
        """
        parts = [format(self.amount.normalize(), "f"), self.currency, self.payment_method, self.payment_id]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Charge:
    id: str
    idempotency_key: str
    request_hash: str
    status: str
    amount: str
    currency: str
    payment_id: str | None
    metadata: Mapping[str, Any]
    created: str
    failure_code: str | None
    failure_message: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "charge",
            "status": self.status,
            "amount": self.amount,
            "currency": self.currency,
            "payment_id": self.payment_id,
            "idempotency_key": self.idempotency_key,
            "created": self.created,
            "failure_code": self.failure_code,
            "failure_message": self.failure_message,
            "metadata": dict(self.metadata),
        }


class IdempotencyKeyReused(Exception):
    """The key already names a charge made from a different request."""

    def __init__(self, existing: Charge) -> None:
        super().__init__(existing.idempotency_key)
        self.existing = existing


@dataclass(slots=True)
class LedgerStats:
    succeeded: int = 0
    declined: int = 0

    @property
    def total(self) -> int:
        return self.succeeded + self.declined


def format_instant(moment: datetime) -> str:
    """RFC 3339 UTC with ``Z``; fractional seconds only when not zero (the project's convention)."""
    moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    micros = moment.microsecond
    if micros:
        text += f".{micros // 1000:03d}" if micros % 1000 == 0 else f".{micros:06d}"
    return text + "Z"


def _row_to_charge(row: tuple[Any, ...]) -> Charge:
    (charge_id, key, request_hash, status, amount, currency, payment_id, metadata, created, f_code, f_msg) = row
    return Charge(
        id=charge_id,
        idempotency_key=key,
        request_hash=request_hash,
        status=status,
        amount=amount,
        currency=currency,
        payment_id=payment_id,
        metadata=json.loads(metadata),
        created=created,
        failure_code=f_code,
        failure_message=f_msg,
    )


class Ledger:
    """Charges by id, idempotency key and payment id, persisted in SQLite (WAL)."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / DB_FILENAME
        # isolation_level=None: autocommit, so each INSERT is its own durable transaction.
        self._db = sqlite3.connect(self.path, isolation_level=None, cached_statements=64)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (our fault drills); only power loss can lose the tail.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        # Counters live in memory so /v1/stats never scans the table during a benchmark.
        self.stats = LedgerStats()
        for status, count in self._db.execute("SELECT status, COUNT(*) FROM charges GROUP BY status"):
            if status == "succeeded":
                self.stats.succeeded = count
            elif status == "declined":
                self.stats.declined = count

    def close(self) -> None:
        self._db.close()

    def charge(self, idempotency_key: str, request: ChargeRequest) -> tuple[Charge, bool]:
        """Create the charge for a new key, or return the key's existing one.

        Returns ``(charge, created)``. Raises ``IdempotencyKeyReused`` when the key
        exists with a different request.
        """
        fingerprint = request.fingerprint()
        declined = request.payment_method.endswith(DECLINE_SUFFIX)
        charge = Charge(
            id="ch_" + secrets.token_hex(12),
            idempotency_key=idempotency_key,
            request_hash=fingerprint,
            status="declined" if declined else "succeeded",
            amount=format(request.amount, "f"),
            currency=request.currency,
            payment_id=request.payment_id,
            metadata=request.metadata,
            created=format_instant(datetime.now(UTC)),
            failure_code=DECLINE_CODE if declined else None,
            failure_message=DECLINE_MESSAGE if declined else None,
        )
        cursor = self._db.execute(
            _INSERT,
            (
                charge.id,
                charge.idempotency_key,
                charge.request_hash,
                charge.status,
                charge.amount,
                charge.currency,
                charge.payment_id,
                json.dumps(charge.metadata, separators=(",", ":")),
                charge.created,
                charge.failure_code,
                charge.failure_message,
            ),
        )
        if cursor.rowcount == 1:
            if declined:
                self.stats.declined += 1
            else:
                self.stats.succeeded += 1
            return charge, True
        existing = self.by_idempotency_key(idempotency_key)
        if existing is None:  # pragma: no cover - only a charge-id collision (2**-96) gets here
            raise RuntimeError("charge insert ignored but no charge holds the key")
        if existing.request_hash != fingerprint:
            raise IdempotencyKeyReused(existing)
        return existing, False

    def by_idempotency_key(self, key: str) -> Charge | None:
        row = self._db.execute(_BY_KEY, (key,)).fetchone()
        return None if row is None else _row_to_charge(row)

    def by_id(self, charge_id: str) -> Charge | None:
        row = self._db.execute(_BY_ID, (charge_id,)).fetchone()
        return None if row is None else _row_to_charge(row)

    def by_payment_id(self, payment_id: str) -> list[Charge]:
        return [_row_to_charge(row) for row in self._db.execute(_BY_PAYMENT_ID, (payment_id,))]

    def reset(self) -> int:
        """Delete every charge; returns how many there were."""
        deleted = self._db.execute("DELETE FROM charges").rowcount
        self.stats = LedgerStats()
        return deleted
