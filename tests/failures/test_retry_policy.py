"""The engine's outcome table, the backoff with full jitter and the reconcile ladder (no database)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from payments.engine.retry_policy import (
    OUTCOME_TABLE,
    REDRIVE,
    DeadLetterReason,
    Phase,
    Redrive,
    RetryBudget,
    backoff_ceiling,
    decide,
    reconcile_deadline,
    reconcile_decision,
    reconcile_delay_seconds,
    record_decision,
    redrive_kind,
    retry_delay_seconds,
)
from payments.gateways.base import ChargeOutcome, ChargeRecord, OutcomeKind
from payments.statuses import Status

T0 = datetime(2027, 1, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def policy(settings: Any) -> Any:
    settings.RETRY_BASE_SECONDS = 2.0
    settings.RETRY_CAP_SECONDS = 60.0
    settings.RETRY_MAX_ATTEMPTS = 5
    settings.RETRY_MAX_AGE_SECONDS = 3600.0
    settings.RECONCILE_LADDER_SECONDS = [10.0, 60.0, 600.0, 3600.0]
    settings.GATEWAY_IDEMPOTENCY_RETENTION_HOURS = 24.0
    settings.RECONCILE_RETENTION_SAFETY = 0.9
    return settings


# --- Backoff ---------------------------------------------------------------------------------------------


@given(
    retry_number=st.integers(min_value=0, max_value=2000),
    base=st.floats(min_value=0.001, max_value=100.0),
    cap=st.floats(min_value=0.001, max_value=10_000.0),
    seed=st.integers(),
)
def test_a_delay_is_drawn_from_zero_to_the_capped_exponential(
    retry_number: int, base: float, cap: float, seed: int
) -> None:
    delay = retry_delay_seconds(retry_number, base=base, cap=cap, rng=random.Random(seed))
    ceiling = min(cap, base * 2.0 ** min(retry_number, 1000))
    assert 0.0 <= delay <= ceiling
    assert backoff_ceiling(retry_number, base=base, cap=cap) == pytest.approx(ceiling)


@given(
    retry_number=st.integers(min_value=0, max_value=50),
    retry_after=st.floats(min_value=0.0, max_value=3600.0),
    seed=st.integers(),
)
def test_retry_after_is_honoured_as_the_later_of_the_two(retry_number: int, retry_after: float, seed: int) -> None:
    jitter = retry_delay_seconds(retry_number, base=2.0, cap=60.0, rng=random.Random(seed))
    delay = retry_delay_seconds(retry_number, retry_after, base=2.0, cap=60.0, rng=random.Random(seed))
    assert delay == max(jitter, retry_after)
    assert delay >= retry_after


def test_full_jitter_spreads_over_the_whole_window() -> None:
    rng = random.Random(7)
    draws = [retry_delay_seconds(3, base=1.0, cap=100.0, rng=rng) for _ in range(2000)]
    assert min(draws) < 0.5
    assert max(draws) > 7.5
    assert sum(draws) / len(draws) == pytest.approx(4.0, rel=0.1)


def test_the_ceiling_doubles_then_stays_at_the_cap() -> None:
    assert [backoff_ceiling(n, base=2.0, cap=60.0) for n in range(7)] == [2, 4, 8, 16, 32, 60, 60]
    assert backoff_ceiling(10_000, base=2.0, cap=60.0) == 60.0  # no overflow
    with pytest.raises(ValueError, match=">= 0"):
        backoff_ceiling(-1, base=2.0, cap=60.0)


# --- The outcome table --------------------------------------------------------------------------------------


def test_the_table_covers_every_phase_kind_and_operator_flag() -> None:
    assert set(OUTCOME_TABLE) == {(p, k, n) for p in Phase for k in OutcomeKind for n in (False, True)}


@pytest.mark.parametrize(
    ("phase", "kind", "needs_operator", "to_status", "dead_letter_reason"),
    [
        (Phase.SUBMIT, OutcomeKind.SUCCEEDED, False, Status.SUCCEEDED, ""),
        (Phase.SUBMIT, OutcomeKind.DECLINED, False, Status.FAILED, ""),
        # our request refused: not the payer's fault, an operator fixes it and re-drives
        (Phase.SUBMIT, OutcomeKind.DECLINED, True, Status.DEAD_LETTERED, DeadLetterReason.GATEWAY_REJECTED),
        (Phase.SUBMIT, OutcomeKind.RETRYABLE, False, Status.RETRY_SCHEDULED, ""),
        (Phase.SUBMIT, OutcomeKind.UNKNOWN, False, Status.RECONCILING, ""),
        (Phase.SUBMIT, OutcomeKind.UNKNOWN, True, Status.DEAD_LETTERED, DeadLetterReason.NEEDS_OPERATOR),
        (Phase.RESEND, OutcomeKind.SUCCEEDED, False, Status.SUCCEEDED, ""),
        (Phase.RESEND, OutcomeKind.DECLINED, False, Status.FAILED, ""),
        # a re-send our gateway refused proves nothing about the earlier request: a person, then the same key
        (Phase.RESEND, OutcomeKind.DECLINED, True, Status.DEAD_LETTERED, DeadLetterReason.NEEDS_OPERATOR),
        # once in doubt, never a new key: a refused re-send asks again later
        (Phase.RESEND, OutcomeKind.RETRYABLE, False, Status.RECONCILING, ""),
        (Phase.RESEND, OutcomeKind.UNKNOWN, False, Status.RECONCILING, ""),
        (Phase.RESEND, OutcomeKind.UNKNOWN, True, Status.DEAD_LETTERED, DeadLetterReason.NEEDS_OPERATOR),
    ],
)
def test_each_outcome_leads_to_its_row(
    phase: Phase, kind: OutcomeKind, needs_operator: bool, to_status: str, dead_letter_reason: str
) -> None:
    outcome = ChargeOutcome(kind=kind, reference="ch_1", failure_code="x", needs_operator=needs_operator)
    budget = RetryBudget(attempt=1, first_attempt=0, started_at=T0)
    decision = decide(outcome, phase=phase, budget=budget, now=T0, reconcile_deadline_at=T0 + timedelta(hours=1))
    assert decision.to_status == to_status
    assert decision.dead_letter_reason == dead_letter_reason
    assert OUTCOME_TABLE[(phase, kind, needs_operator)].to_status == to_status


def test_no_row_retries_an_outcome_that_may_have_charged_with_a_new_key() -> None:
    for (phase, kind, _), rule in OUTCOME_TABLE.items():
        if rule.to_status == Status.RETRY_SCHEDULED:
            assert (phase, kind) == (Phase.SUBMIT, OutcomeKind.RETRYABLE)
        # nor later, through an operator's re-drive: once in doubt, a dead letter reconciles first
        if phase is Phase.RESEND and rule.to_status == Status.DEAD_LETTERED:
            assert redrive_kind(rule.dead_letter_reason) is not Redrive.NEW_ATTEMPT, (phase, kind, rule)


def test_a_retry_records_what_the_backoff_drew() -> None:
    outcome = ChargeOutcome(kind=OutcomeKind.RETRYABLE)
    decision = decide(outcome, phase=Phase.SUBMIT, budget=RetryBudget(3, 0, T0), now=T0, rng=random.Random(1))
    assert decision.to_status == Status.RETRY_SCHEDULED
    assert decision.next_attempt_in is not None
    assert decision.data is not None
    assert decision.data["retry_number"] == 2
    assert decision.data["backoff_ceiling_seconds"] == 8.0
    drawn = decision.next_attempt_in.total_seconds()
    assert 0 <= drawn <= 8.0
    assert drawn == pytest.approx(decision.data["retry_in_seconds"], abs=1e-5)


def test_retries_end_in_a_dead_letter_when_attempts_run_out(policy: Any) -> None:
    outcome = ChargeOutcome(kind=OutcomeKind.RETRYABLE)
    decision = decide(outcome, phase=Phase.SUBMIT, budget=RetryBudget(5, 0, T0), now=T0)
    assert (decision.to_status, decision.dead_letter_reason) == (
        Status.DEAD_LETTERED,
        DeadLetterReason.RETRIES_EXHAUSTED,
    )
    # a re-drive starts a fresh budget: attempt 6 after a re-drive at attempt 5 is the first of it
    assert decide(outcome, phase=Phase.SUBMIT, budget=RetryBudget(6, 5, T0), now=T0).to_status == (
        Status.RETRY_SCHEDULED
    )


def test_retries_end_in_a_dead_letter_when_the_payment_is_too_old(policy: Any) -> None:
    outcome = ChargeOutcome(kind=OutcomeKind.RETRYABLE, retry_after_seconds=120)
    late = T0 + timedelta(seconds=3600 - 60)  # the next try (≥ 120 s away) would start past the hour
    decision = decide(outcome, phase=Phase.SUBMIT, budget=RetryBudget(1, 0, T0), now=late)
    assert decision.dead_letter_reason == DeadLetterReason.RETRY_WINDOW_EXCEEDED


def test_a_failure_carries_only_user_safe_fields() -> None:
    declined = ChargeOutcome(
        kind=OutcomeKind.DECLINED, failure_code="insufficient_funds", failure_message="Safe.", detail="raw 51"
    )
    decision = decide(declined, phase=Phase.SUBMIT, budget=RetryBudget(1, 0, T0), now=T0)
    assert (decision.failure_code, decision.failure_message) == ("insufficient_funds", "Safe.")
    assert "raw" not in str(decision.data)


# --- Reconciliation ------------------------------------------------------------------------------------------


def test_the_ladder_climbs_and_its_last_rung_repeats() -> None:
    assert [reconcile_delay_seconds(n) for n in range(6)] == [10, 60, 600, 3600, 3600, 3600]


def test_reconciliation_stops_within_the_keys_retention() -> None:
    first_sent = T0
    deadline = reconcile_deadline(first_sent)
    assert deadline == T0 + timedelta(hours=24 * 0.9)

    # far from it: the ladder's rung
    early = reconcile_decision(reason="r", tries=1, now=T0 + timedelta(minutes=5), deadline=deadline)
    assert (early.to_status, early.next_attempt_in) == (Status.RECONCILING, timedelta(seconds=60))
    # close to it: one last try at the deadline, not after
    close = reconcile_decision(reason="r", tries=9, now=deadline - timedelta(minutes=10), deadline=deadline)
    assert close.next_attempt_in == timedelta(minutes=10)
    # at it: an operator decides
    done = reconcile_decision(reason="r", tries=10, now=deadline, deadline=deadline)
    assert (done.to_status, done.dead_letter_reason) == (
        Status.DEAD_LETTERED,
        DeadLetterReason.RECONCILIATION_INCONCLUSIVE,
    )


def _record(**overrides: Any) -> ChargeRecord:
    fields: dict[str, Any] = {
        "reference": "ch_1",
        "status": "succeeded",
        "idempotency_key": "pay_x_1",
        "amount": Decimal("125.50"),
        "currency": "EUR",
        "payment_id": "p1",
    }
    return ChargeRecord(**(fields | overrides))


def test_a_charge_found_settles_the_attempt_only_if_it_is_ours() -> None:
    found = record_decision(_record(), payment_id="p1", amount=Decimal("125.50"), currency="EUR")
    assert (found.to_status, found.gateway_reference) == (Status.SUCCEEDED, "ch_1")
    other = record_decision(_record(amount=Decimal("1.00")), payment_id="p1", amount=Decimal("125.50"), currency="EUR")
    assert other.dead_letter_reason == DeadLetterReason.CHARGE_MISMATCH


def test_a_decline_found_by_lookup_is_mapped_to_the_user_safe_code() -> None:
    # card networks ask merchants not to tell the payer "stolen": the generic decline it is
    decision = record_decision(
        _record(status="declined", failure_code="stolen_card", failure_message="Card reported stolen"),
        payment_id="p1",
        amount=Decimal("125.50"),
        currency="EUR",
    )
    assert decision.to_status == Status.FAILED
    assert decision.failure_code == "card_declined"
    assert "stolen" not in decision.failure_message.lower()


def test_redrive_takes_a_new_key_only_after_a_proven_uncharged_attempt() -> None:
    assert redrive_kind(DeadLetterReason.RETRIES_EXHAUSTED) == Redrive.NEW_ATTEMPT
    assert redrive_kind(DeadLetterReason.GATEWAY_REJECTED) == Redrive.NEW_ATTEMPT
    assert redrive_kind(DeadLetterReason.NEEDS_OPERATOR) == Redrive.RECONCILE
    assert redrive_kind(DeadLetterReason.RECONCILIATION_INCONCLUSIVE) == Redrive.RECONCILE
    assert redrive_kind(DeadLetterReason.CHARGE_MISMATCH) == Redrive.REFUSE
    assert redrive_kind("") == Redrive.RECONCILE  # unknown: never a blind new key
    assert set(REDRIVE) == set(DeadLetterReason)


# --- A charge still processing (Stripe: SEPA, ACH) -------------------------------------------------------

PROCESSING_OUTCOME = ChargeOutcome(OutcomeKind.UNKNOWN, reference="pi_1", in_progress=True, detail="processing")


def test_a_processing_charge_is_polled_on_its_own_schedule_without_the_ladder(settings: Any) -> None:
    settings.GATEWAY_PROCESSING_POLL_SECONDS = 3600.0
    settings.GATEWAY_PROCESSING_MAX_DAYS = 14.0
    budget = RetryBudget(attempt=1, first_attempt=0, started_at=T0)
    # even a day and a half in, past the key retention bound that stops reconciliation
    now = T0 + timedelta(hours=36)
    for phase in (Phase.SUBMIT, Phase.RESEND):
        decision = decide(
            PROCESSING_OUTCOME,
            phase=phase,
            budget=budget,
            now=now,
            reconcile_tries=7,
            reconcile_deadline_at=T0 + timedelta(hours=21.6),
        )
        assert (decision.to_status, decision.reason) == (Status.RECONCILING, "outcome_unknown")
        assert (decision.data or {})["processing"] is True  # no rung climbed for it
        assert decision.next_attempt_in == timedelta(hours=1)
    record = ChargeRecord("pi_1", "processing", "k", Decimal("1.00"), "EUR")
    found = record_decision(record, payment_id="", amount=Decimal("1.00"), currency="EUR", started_at=T0, now=now)
    assert (found.to_status, (found.data or {}).get("processing")) == (Status.RECONCILING, True)


def test_a_charge_processing_longer_than_the_method_can_take_goes_to_a_person(settings: Any) -> None:
    settings.GATEWAY_PROCESSING_MAX_DAYS = 14.0
    budget = RetryBudget(attempt=1, first_attempt=0, started_at=T0)
    decision = decide(PROCESSING_OUTCOME, phase=Phase.SUBMIT, budget=budget, now=T0 + timedelta(days=15))
    assert (decision.to_status, decision.dead_letter_reason) == (Status.DEAD_LETTERED, "needs_operator")


def test_a_processing_charge_is_no_gateway_failure_for_the_circuit() -> None:
    from payments.engine.execution import _is_gateway_failure

    assert not _is_gateway_failure(PROCESSING_OUTCOME)
    assert _is_gateway_failure(ChargeOutcome(OutcomeKind.UNKNOWN, detail="timeout"))


def test_an_authorisation_without_capture_is_dead_lettered_at_once_and_loudly(caplog: Any) -> None:
    from payments.engine.execution import outcome_write
    from payments.gateways.classification import classify_payment_intent
    from payments.models import Payment

    # given Stripe's requires_capture: the payer's funds are held, and we never capture
    outcome = classify_payment_intent("pi_2", "requires_capture")
    payment = Payment(attempts=1, scheduled_for=T0, redrive_attempt=0)

    write = outcome_write(payment, outcome, now=T0 + timedelta(seconds=1))

    assert (write.to_status, write.dead_letter_reason) == (Status.DEAD_LETTERED, "needs_operator")
    assert any(r.levelname == "ERROR" and "needs an operator" in r.getMessage() for r in caplog.records)
