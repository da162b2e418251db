"""The gateway interface the engine talks to, and the outcome it gets back.

Adapters translate a provider's API into ``ChargeOutcome``; the engine never
sees HTTP. Every call carries an idempotency key derived from (payment,
attempt), so a repeated call for the same attempt never charges twice.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol


class OutcomeKind(enum.StrEnum):
    SUCCEEDED = "succeeded"  # charged
    DECLINED = "declined"  # terminal business failure, nothing charged, never retry
    RETRYABLE = "retryable"  # proven not charged (refused, 503 before processing, 429): may retry
    UNKNOWN = "unknown"  # may or may not have charged (timeout after sending, dropped response)


@dataclass(frozen=True)
class ChargeRequest:
    payment_id: str
    idempotency_key: str
    amount: Decimal
    currency: str
    payment_method: str


@dataclass(frozen=True)
class ChargeOutcome:
    kind: OutcomeKind
    reference: str = ""  # the gateway's charge id, when known
    failure_code: str = ""  # a stable code safe to show the user (e.g. "card_declined")
    failure_message: str = ""  # safe to show the user: no gateway internals
    retry_after_seconds: float | None = None  # from a 429/503 Retry-After
    detail: str = ""  # for operators and logs: no personal data, no tokens
    # A person must look (our request was refused as invalid, the gateway rejected our credentials, the
    # idempotency key names a different request): the engine should page an operator, not just retry.
    needs_operator: bool = False


@dataclass(frozen=True)
class ChargeRecord:
    """A charge as the gateway's ledger knows it (for reconciliation)."""

    reference: str
    status: str  # "succeeded" | "declined"
    idempotency_key: str
    amount: Decimal
    currency: str
    payment_id: str = ""
    failure_code: str = ""
    failure_message: str = ""
    raw_status: str = field(default="")


class GatewayLookupError(Exception):
    """The gateway could not be asked (down, timeout): nothing can be concluded."""


class Gateway(Protocol):
    name: str

    def charge(self, request: ChargeRequest) -> ChargeOutcome:
        """Submit one charge. Never raises for gateway/network failures: they become outcomes."""
        ...

    def charge_many(self, requests: Sequence[ChargeRequest]) -> list[ChargeOutcome]:
        """Submit several charges concurrently (keep-alive connections); results in input order."""
        ...

    def find_charge(self, idempotency_key: str) -> ChargeRecord | None:
        """The charge made under this key, or None when the gateway shows none.

        Sandbox: its ledger is strongly consistent, so None is proof. Stripe: Search is eventually
        consistent, so None means "not visible yet". Either way a caller may follow None only by
        re-sending the same request under the same key (which the gateway deduplicates), never by
        moving on to a new key. Raises ``GatewayLookupError`` when the gateway cannot answer.
        """
        ...
