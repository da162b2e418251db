"""The gateway interface the engine talks to, and the outcome it gets back.

Adapters translate a provider's API into ``ChargeOutcome``; the engine never
sees HTTP. Every call carries an idempotency key derived from (payment,
attempt), so a repeated call for the same attempt never charges twice.
"""

from __future__ import annotations

import enum
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
C = TypeVar("C")


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
    # Accepted and still processing at the gateway (Stripe ``processing``: SEPA, ACH debits take days):
    # the outcome is pending, not unknown because of trouble; never a failure for the circuit breaker.
    in_progress: bool = False


@dataclass(frozen=True)
class ChargeRecord:
    """A charge as the gateway's ledger knows it (for reconciliation)."""

    reference: str
    status: str  # "succeeded" | "declined" | "processing" (accepted, not settled yet)
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


# --- per-process state (fork safety) -------------------------------------------------------------------


class ProcessLocal(Generic[T]):
    """A value created on first use in each process, never inherited across ``fork()``.

    Celery's prefork pool forks workers from a parent that may already hold a gateway: sockets and
    threads copied into the child are unusable (or, worse, shared with the parent). Each process
    builds its own on first use; the parent's copy is dropped in the child, never closed there.
    """

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._value: tuple[int, T] | None = None
        self._locks: dict[int, threading.Lock] = {}

    def get(self) -> T:
        pid = os.getpid()
        current = self._value
        if current is not None and current[0] == pid:
            return current[1]
        # One lock per pid: a lock copied by fork() while another thread held it would never be released.
        with self._locks.setdefault(pid, threading.Lock()):
            current = self._value
            if current is None or current[0] != pid:
                current = (pid, self._factory())
                self._value = current
            return current[1]

    def pop(self) -> T | None:
        """Forget this process's value and return it (to be closed), or None if it was never created here."""
        current, self._value = self._value, None
        return current[1] if current is not None and current[0] == os.getpid() else None


class ProcessClient(Generic[C]):
    """An adapter's client (a connection pool, an SDK client) and its thread pool, each per process.

    Both are built on first use in each process (``ProcessLocal``), so a prefork child never uses
    its parent's sockets or threads. ``close()`` ends this process's threads, then closes its client;
    the next use builds new ones.
    """

    def __init__(
        self,
        connect: Callable[[], C],
        disconnect: Callable[[C], object],
        *,
        threads: int,
        thread_name_prefix: str,
    ) -> None:
        self.client: ProcessLocal[C] = ProcessLocal(connect)
        self.executor: ProcessLocal[ThreadPoolExecutor] = ProcessLocal(
            lambda: ThreadPoolExecutor(max_workers=threads, thread_name_prefix=thread_name_prefix)
        )
        self._disconnect = disconnect

    def close(self) -> None:
        if (executor := self.executor.pop()) is not None:
            executor.shutdown(wait=True)
        if (client := self.client.pop()) is not None:
            self._disconnect(client)
