"""A circuit breaker per gateway, shared by every worker process: one row in the database.

Why the database: every worker and the sweep already talk to it, and the breaker is
consulted once per *batch* (one primary-key read before, one short locked update after),
not per call. Its clock is the database's (``Now()``), so workers' clocks do not matter.

- **closed**: calls go through. Each batch adds its calls and failures (``RETRYABLE`` and
  ``UNKNOWN`` outcomes, failed lookups: the gateway is unwell) to a fixed window of
  ``CIRCUIT_WINDOW_SECONDS``. At ``CIRCUIT_MIN_CALLS`` calls or more with a failure ratio of
  ``CIRCUIT_FAILURE_RATIO`` or more, it **opens** for ``CIRCUIT_OPEN_SECONDS``.
- **open**: nobody calls the gateway. The sweep hands out no work (``circuit_sweep_gate``);
  an execution that arrives anyway defers its payments without beginning an attempt (see
  ``execution``), so nothing is lost, duplicated, or counted as an attempt.
- **half_open**: after ``opened_until``, the first batch to ask takes the probe (a guarded
  update, so only one) and sends at most ``CIRCUIT_PROBE_SIZE`` payments. Its outcome closes
  the circuit (failure ratio below the threshold) or opens it again. A probe whose worker
  died is replaced after ``probe_timeout()``. While a probe is due the sweep hands out only a
  probe's worth of each kind of work, so few payments are deferred again.

Every change of state writes an ``AuditEvent`` (actor ``system:circuit``,
``gateway_circuit.opened|half_opened|closed``) in the same transaction.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.db.models.functions import Now

from audit.services import audit_record
from common import actors
from payments.models import GatewayCircuit

logger = logging.getLogger(__name__)

CIRCUIT_ACTOR = actors.system("circuit")
# While a probe is in flight, others look again this soon (the sweep holds new work back meanwhile).
HALF_OPEN_RECHECK = timedelta(seconds=1)
State = GatewayCircuit.State


def probe_timeout() -> timedelta:
    """A probe that has not reported after this is presumed lost with its worker."""
    return timedelta(seconds=max(5.0, 2 * settings.GATEWAY_TIMEOUT_SECONDS + 2))


@dataclass(frozen=True)
class Admission:
    """How many of a batch may call the gateway now, and when the others should come back."""

    allowed: int
    probe: bool = False
    retry_in: timedelta | None = None  # by the database's clock


def _row(name: str, *, lock: bool = False) -> GatewayCircuit:
    """The gateway's row with the database's clock (``db_now``), created on first use."""
    queryset = GatewayCircuit.objects.filter(name=name).annotate(db_now=Now())
    if lock:
        queryset = queryset.select_for_update()
    circuit = queryset.first()
    if circuit is None:
        GatewayCircuit.objects.get_or_create(name=name)
        circuit = queryset.get()
    return circuit


class SweepGate(enum.StrEnum):
    """What the sweep may hand out now."""

    CLOSED = "closed"  # everything due
    PROBE = "probe"  # a probe is due: only a probe's worth (the rest would be deferred again at once)
    BLOCKED = "blocked"  # nothing that calls the gateway


def circuit_sweep_gate(name: str) -> SweepGate:
    circuit = _row(name)
    now: datetime = circuit.db_now  # type: ignore[attr-defined]
    if circuit.state == State.CLOSED:
        return SweepGate.CLOSED
    if circuit.state == State.OPEN and circuit.opened_until is not None and now < circuit.opened_until:
        return SweepGate.BLOCKED
    if (
        circuit.state == State.HALF_OPEN
        and circuit.probe_started_at is not None
        and now < circuit.probe_started_at + probe_timeout()
    ):
        return SweepGate.BLOCKED
    return SweepGate.PROBE


def circuit_admit(name: str, wanted: int) -> Admission:
    """Before a batch: how many of ``wanted`` payments may call the gateway."""
    if wanted <= 0:
        return Admission(0)
    circuit = _row(name)
    now: datetime = circuit.db_now  # type: ignore[attr-defined]
    if circuit.state == State.CLOSED:
        return Admission(wanted)
    if circuit.state == State.OPEN and circuit.opened_until is not None and now < circuit.opened_until:
        return Admission(0, retry_in=circuit.opened_until - now)
    if (
        circuit.state == State.HALF_OPEN
        and circuit.probe_started_at is not None
        and now < circuit.probe_started_at + probe_timeout()
    ):
        return Admission(0, retry_in=HALF_OPEN_RECHECK)
    # Open and due for a probe, or a probe presumed lost: the one guarded update that wins takes it.
    with transaction.atomic():
        won = (
            GatewayCircuit.objects.filter(name=name)
            .filter(
                Q(state=State.OPEN, opened_until__lte=Now())
                | Q(state=State.OPEN, opened_until__isnull=True)
                | Q(state=State.HALF_OPEN, probe_started_at__lte=now - probe_timeout())
                | Q(state=State.HALF_OPEN, probe_started_at__isnull=True)
            )
            .update(state=State.HALF_OPEN, probe_started_at=Now(), changed_at=Now())
        )
        if won:
            circuit.refresh_from_db()
            audit_record(
                actor=CIRCUIT_ACTOR,
                action="gateway_circuit.half_opened",
                target=circuit,
                data={"probe_size": min(wanted, settings.CIRCUIT_PROBE_SIZE)},
            )
    if not won:
        return Admission(0, retry_in=HALF_OPEN_RECHECK)
    logger.warning("circuit %s: half-open, probing with %s payments", name, min(wanted, settings.CIRCUIT_PROBE_SIZE))
    return Admission(min(wanted, settings.CIRCUIT_PROBE_SIZE), probe=True, retry_in=HALF_OPEN_RECHECK)


def circuit_abandon_probe(name: str) -> None:
    """A probe batch that had nothing to send (canceled, not due): let the next batch probe at once."""
    GatewayCircuit.objects.filter(name=name, state=State.HALF_OPEN).update(
        state=State.OPEN, opened_until=Now(), probe_started_at=None
    )


def _failing(calls: int, failures: int) -> bool:
    return calls > 0 and failures / calls >= settings.CIRCUIT_FAILURE_RATIO


def circuit_record(name: str, *, calls: int, failures: int, probe: bool = False) -> str:
    """After a batch: add its calls and failures; open or close the circuit. Returns the state after."""
    if calls <= 0:
        return ""
    window = timedelta(seconds=settings.CIRCUIT_WINDOW_SECONDS)
    open_for = timedelta(seconds=settings.CIRCUIT_OPEN_SECONDS)
    with transaction.atomic():
        circuit = _row(name, lock=True)
        now: datetime = circuit.db_now  # type: ignore[attr-defined]
        action = ""
        data: dict[str, object] = {"calls": calls, "failures": failures}
        if circuit.state == State.CLOSED:
            if now - circuit.window_started_at >= window:
                circuit.window_started_at, circuit.window_calls, circuit.window_failures = now, 0, 0
            circuit.window_calls += calls
            circuit.window_failures += failures
            if circuit.window_calls >= settings.CIRCUIT_MIN_CALLS and _failing(
                circuit.window_calls, circuit.window_failures
            ):
                action = "gateway_circuit.opened"
                data = {"window_calls": circuit.window_calls, "window_failures": circuit.window_failures}
                circuit.state, circuit.opened_until, circuit.changed_at = State.OPEN, now + open_for, now
        elif circuit.state == State.HALF_OPEN and probe:
            if _failing(calls, failures):
                action = "gateway_circuit.opened"
                data["probe"] = True
                circuit.state, circuit.opened_until, circuit.changed_at = State.OPEN, now + open_for, now
            else:
                action = "gateway_circuit.closed"
                circuit.state, circuit.opened_until, circuit.changed_at = State.CLOSED, None, now
                circuit.window_started_at, circuit.window_calls, circuit.window_failures = now, 0, 0
            circuit.probe_started_at = None
        # else: a batch admitted before the circuit opened, reporting late: it decides nothing.
        circuit.save(
            update_fields=[
                "state",
                "window_started_at",
                "window_calls",
                "window_failures",
                "opened_until",
                "probe_started_at",
                "changed_at",
            ]
        )
        if action:
            if circuit.opened_until is not None:
                data["opened_until"] = circuit.opened_until.isoformat()
            audit_record(actor=CIRCUIT_ACTOR, action=action, target=circuit, data=data)
    if action:
        logger.warning("circuit %s: %s %s", name, action.rpartition(".")[2], data)
    return str(circuit.state)


def circuit_reset(name: str, *, actor: str) -> GatewayCircuit:
    """An operator closes the circuit by hand (the gateway is known to be back)."""
    with transaction.atomic():
        circuit = _row(name, lock=True)
        now: datetime = circuit.db_now  # type: ignore[attr-defined]
        previous = circuit.state
        circuit.state, circuit.opened_until, circuit.probe_started_at = State.CLOSED, None, None
        circuit.changed_at = now
        circuit.window_started_at, circuit.window_calls, circuit.window_failures = now, 0, 0
        circuit.save()
        audit_record(
            actor=actor, action="gateway_circuit.closed", target=circuit, data={"from": previous, "manual": True}
        )
    return circuit
