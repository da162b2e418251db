"""The engine's timing settings, checked against each other (Django system checks, ``docs/execution.md``).

A lease is only a guarantee if the work it covers cannot outlive it. The bounds here are
computed from the settings and the gateway adapter's own constants (timeouts, tries, the
SDK's backoff sleeps, threads), and ``manage.py check`` (so ``check --deploy``, ``migrate``,
``runserver`` and every Celery process start) refuses a combination that breaks one:

* **Submission** (``SUBMIT_LEASE_SECONDS``): an execution task's gateway call for a batch of
  ``EXECUTION_BATCH_SIZE`` takes at most ``waves x tries x (GATEWAY_TIMEOUT_SECONDS + connect)
  + waves x backoff``, where ``waves = ceil(batch / concurrency)``. The lease must cover that
  plus ``LEASE_MARGIN_SECONDS`` (the database writes around it).
* **Reconciliation** (the same lease): lookups run concurrently within a time budget (what the
  lease leaves after a re-send's worst case and the margin); the budget must allow one lookup request.
* **Dispatch** (``DISPATCH_LEASE_SECONDS``): a payment is claimed up to ``SWEEP_LOOKAHEAD_SECONDS``
  before it is due and its task waits for that instant; the lease must outlast the wait, two sweep
  intervals and ``DISPATCH_PICKUP_MARGIN_SECONDS``, or the sweep would hand it out again.
* **Reconciliation ladder** (``RECONCILE_LADDER_SECONDS``): every rung must be climbed before
  reconciliation stops at ``RECONCILE_RETENTION_SAFETY`` x ``GATEWAY_IDEMPOTENCY_RETENTION_HOURS``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core import checks

# Database writes, scheduling and clock skew around the gateway work of one task.
LEASE_MARGIN_SECONDS = 2.0
# Between an execution task's ETA and a worker taking it (queue wait, prefetch).
DISPATCH_PICKUP_MARGIN_SECONDS = 2.0


@dataclass(frozen=True)
class GatewayWork:
    """How long the configured adapter can take, from its own constants and the settings."""

    backend: str
    per_try_seconds: float  # connect + read timeout of one HTTP request
    tries: int  # the first request plus the client's own retries under the same key
    backoff_seconds: float  # the client's sleeps between those tries, at most
    concurrency: int  # requests in flight at once (threads = connections)

    @property
    def call_seconds(self) -> float:
        """One charge or lookup, all its tries and sleeps included."""
        return self.tries * self.per_try_seconds + self.backoff_seconds

    def batch_seconds(self, size: int) -> float:
        """``size`` charges through ``charge_many``: in waves of ``concurrency``."""
        return math.ceil(max(1, size) / self.concurrency) * self.call_seconds


def gateway_work(backend: str | None = None) -> GatewayWork:
    """The configured adapter's worst case, without building it (no API key or network needed)."""
    name = str(backend or settings.GATEWAY_BACKEND).strip().lower()
    timeout = float(settings.GATEWAY_TIMEOUT_SECONDS)
    override = getattr(settings, "GATEWAY_MAX_CONCURRENCY", None)
    if name == "stripe":
        from payments.gateways import stripe as adapter

        retries = adapter.DEFAULT_MAX_NETWORK_RETRIES
        # stripe.HTTPClient sleeps min(INITIAL_DELAY * 2**(n-1), MAX_DELAY) before retry n (jitter only shortens it).
        import stripe

        initial, cap = stripe.HTTPClient.INITIAL_DELAY, stripe.HTTPClient.MAX_DELAY
        backoff = sum(min(initial * 2 ** (n - 1), cap) for n in range(1, retries + 1))
        connect, tries, concurrency = adapter.DEFAULT_CONNECT_TIMEOUT_SECONDS, 1 + retries, adapter.DEFAULT_CONCURRENCY
    else:
        from payments.gateways import sandbox as sandbox_adapter

        connect, tries, backoff = sandbox_adapter.DEFAULT_CONNECT_TIMEOUT_SECONDS, 1, 0.0
        concurrency = sandbox_adapter.DEFAULT_CONCURRENCY
    if override is not None:
        concurrency = int(override)
    return GatewayWork(
        backend=name,
        per_try_seconds=timeout + min(connect, timeout),
        tries=tries,
        backoff_seconds=backoff,
        concurrency=max(1, concurrency),
    )


def submit_work_seconds() -> float:
    """The longest an execution task's gateway work for one batch can take."""
    return gateway_work().batch_seconds(settings.EXECUTION_BATCH_SIZE)


def reconcile_lookup_budget_seconds() -> float:
    """How long a reconcile task may spend on lookups: what the lease leaves after a re-send and the margin."""
    lease = settings.SUBMIT_LEASE.total_seconds()
    return lease - submit_work_seconds() - LEASE_MARGIN_SECONDS


def _seconds(value: Any) -> float:
    return float(value.total_seconds()) if hasattr(value, "total_seconds") else float(value)


@checks.register("payments")
def check_timing_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Refuse timing settings that contradict each other (see the module doc)."""
    errors: list[checks.CheckMessage] = []
    work = gateway_work()
    lease = _seconds(settings.SUBMIT_LEASE)
    batch = int(settings.EXECUTION_BATCH_SIZE)
    waves = math.ceil(max(1, batch) / work.concurrency)
    submit = work.batch_seconds(batch)
    if lease < submit + LEASE_MARGIN_SECONDS:
        errors.append(
            checks.Error(
                f"SUBMIT_LEASE_SECONDS ({lease:g}) is shorter than the gateway work it covers: "
                f"{waves} wave(s) (EXECUTION_BATCH_SIZE {batch} / concurrency {work.concurrency}) x {work.tries} "
                f"tries x {work.per_try_seconds:g} s (GATEWAY_TIMEOUT_SECONDS + connect) + {waves} x "
                f"{work.backoff_seconds:g} s backoff + {LEASE_MARGIN_SECONDS:g} s margin = "
                f"{submit + LEASE_MARGIN_SECONDS:g} s (GATEWAY_BACKEND {work.backend}).",
                hint="Raise SUBMIT_LEASE_SECONDS, or lower GATEWAY_TIMEOUT_SECONDS or EXECUTION_BATCH_SIZE, "
                "or raise GATEWAY_MAX_CONCURRENCY.",
                id="payments.E101",
            )
        )
    elif lease - submit - LEASE_MARGIN_SECONDS < work.per_try_seconds:
        errors.append(
            checks.Error(
                f"SUBMIT_LEASE_SECONDS ({lease:g}) leaves a reconcile task {lease - submit - LEASE_MARGIN_SECONDS:g} s "
                f"for its lookups after a re-send's worst case ({submit:g} s) and the margin: less than one "
                f"lookup request ({work.per_try_seconds:g} s: GATEWAY_TIMEOUT_SECONDS + connect).",
                hint=f"Make SUBMIT_LEASE_SECONDS at least {submit + LEASE_MARGIN_SECONDS + work.per_try_seconds:g}.",
                id="payments.E102",
            )
        )

    dispatch = _seconds(settings.DISPATCH_LEASE)
    lookahead = _seconds(settings.SWEEP_LOOKAHEAD)
    interval = float(settings.SWEEP_INTERVAL_SECONDS)
    needed = lookahead + 2 * interval + DISPATCH_PICKUP_MARGIN_SECONDS
    if dispatch < needed:
        errors.append(
            checks.Error(
                f"DISPATCH_LEASE_SECONDS ({dispatch:g}) must outlast a claim's wait for its due instant: "
                f"SWEEP_LOOKAHEAD_SECONDS ({lookahead:g}) + 2 x SWEEP_INTERVAL_SECONDS ({interval:g}) + "
                f"{DISPATCH_PICKUP_MARGIN_SECONDS:g} s pick-up margin = {needed:g} s; a shorter lease hands "
                "payments out again before their task could run.",
                hint="Raise DISPATCH_LEASE_SECONDS or lower SWEEP_LOOKAHEAD_SECONDS.",
                id="payments.E103",
            )
        )

    ladder = [float(rung) for rung in settings.RECONCILE_LADDER_SECONDS]
    retention_hours = float(settings.GATEWAY_IDEMPOTENCY_RETENTION_HOURS)
    safety = float(settings.RECONCILE_RETENTION_SAFETY)
    window = retention_hours * 3600 * safety
    if not ladder or any(rung <= 0 for rung in ladder):
        errors.append(
            checks.Error(
                f"RECONCILE_LADDER_SECONDS ({ladder}) must be one or more positive numbers of seconds.",
                id="payments.E104",
            )
        )
    elif not 0 < safety <= 1:
        errors.append(
            checks.Error(
                f"RECONCILE_RETENTION_SAFETY ({safety:g}) must be in (0, 1]: reconciliation must stop before "
                "the gateway forgets the key (GATEWAY_IDEMPOTENCY_RETENTION_HOURS).",
                id="payments.E105",
            )
        )
    elif sum(ladder) > window:
        errors.append(
            checks.Error(
                f"RECONCILE_LADDER_SECONDS (sum {sum(ladder):g} s) does not fit before reconciliation stops at "
                f"RECONCILE_RETENTION_SAFETY ({safety:g}) x GATEWAY_IDEMPOTENCY_RETENTION_HOURS "
                f"({retention_hours:g}) = {window:g} s: its last rungs would never be climbed.",
                hint="Shorten the ladder, or check the gateway's idempotency-key retention.",
                id="payments.E106",
            )
        )
    elif lease >= window:
        errors.append(
            checks.Error(
                f"SUBMIT_LEASE_SECONDS ({lease:g}) must be far below the gateway's key retention window "
                f"({window:g} s = RECONCILE_RETENTION_SAFETY x GATEWAY_IDEMPOTENCY_RETENTION_HOURS).",
                id="payments.E107",
            )
        )
    return errors
