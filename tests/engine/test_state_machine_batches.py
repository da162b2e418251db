"""The state machine's batch transitions: each row guarded on its own, one event per move."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from payments import state_machine
from payments.models import Payment, PaymentEvent
from payments.services import payment_cancel
from payments.state_machine import (
    OutcomeWrite,
    begin_submissions,
    claim_due_payments,
    claim_waiting_payments,
    expire_submissions,
    record_outcomes,
    redispatch_expired_payments,
    release_dispatch_leases,
)
from payments.statuses import Status

from .conftest import MakePayment

LEASE = timedelta(seconds=120)
LOOKAHEAD = timedelta(seconds=30)

pytestmark = pytest.mark.django_db


def set_fields(payment: Payment, **fields: Any) -> Payment:
    Payment.objects.filter(pk=payment.pk).update(**fields)
    payment.refresh_from_db()
    return payment


def events(payment: Payment) -> list[tuple[str, str, str, int]]:
    return [
        (e.from_status, e.to_status, e.reason, e.attempt)
        for e in PaymentEvent.objects.filter(payment=payment).order_by("at", "id")
    ]


def test_the_raw_sql_names_the_models_tables() -> None:
    assert Payment._meta.db_table == "payments_payment"
    assert PaymentEvent._meta.db_table == "payments_paymentevent"


def test_it_claims_payments_due_within_the_lookahead_in_due_order(make_payment: MakePayment) -> None:
    # given three payments due soon (out of order) and one far away
    later = make_payment(due_in=20)
    sooner = make_payment(due_in=5)
    overdue = make_payment(due_in=-3)
    far = make_payment(due_in=3600)

    # when the sweep claims
    claims = claim_due_payments(lookahead=LOOKAHEAD, lease=LEASE, limit=10, actor="system:sweep")

    # then the due ones are dispatched, in due order, with a lease from their due instant
    assert [c.payment_id for c in claims] == [overdue.pk, sooner.pk, later.pk]
    for payment in (overdue, sooner, later):
        payment.refresh_from_db()
        assert payment.status == Status.DISPATCHED
        assert payment.lease_expires_at is not None
        assert payment.lease_expires_at >= max(payment.scheduled_for, timezone.now() - timedelta(seconds=5)) + LEASE
        assert events(payment)[-1] == ("scheduled", "dispatched", "due", 0)
    far.refresh_from_db()
    assert far.status == Status.SCHEDULED
    # and a second claim finds nothing more
    assert claim_due_payments(lookahead=LOOKAHEAD, lease=LEASE, limit=10, actor="system:sweep") == []


def test_it_claims_at_most_the_batch_size(make_payment: MakePayment) -> None:
    for _ in range(5):
        make_payment(due_in=1)
    assert len(claim_due_payments(lookahead=LOOKAHEAD, lease=LEASE, limit=3, actor="t")) == 3
    assert len(claim_due_payments(lookahead=LOOKAHEAD, lease=LEASE, limit=3, actor="t")) == 2


@pytest.mark.django_db(transaction=True)
def test_it_skips_rows_another_transaction_holds(make_payment: MakePayment) -> None:
    # given a due payment locked by another connection (a concurrent sweep or cancel)
    held = make_payment(due_in=1)
    free = make_payment(due_in=2)
    db = connection.settings_dict
    with psycopg.connect(
        host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"], dbname=db["NAME"]
    ) as other:
        other.execute("SELECT 1 FROM payments_payment WHERE id = %s FOR UPDATE", [held.pk])
        # when the sweep claims, it neither waits nor takes the held row
        claims = claim_due_payments(lookahead=LOOKAHEAD, lease=LEASE, limit=10, actor="t")
    assert [c.payment_id for c in claims] == [free.pk]


def test_begin_moves_due_dispatched_payments_to_submitting_with_a_new_attempt(make_payment: MakePayment) -> None:
    due = make_payment(due_in=-1)
    canceled = make_payment(due_in=-1)
    early = make_payment(due_in=30)
    claim_due_payments(lookahead=LOOKAHEAD, lease=LEASE, limit=10, actor="t")
    payment_cancel(payment_id=canceled.pk, actor="test")

    start = begin_submissions([due.pk, canceled.pk, early.pk], lease=timedelta(seconds=60), actor="system:worker")

    assert [p.pk for p in start.submitting] == [due.pk]
    assert start.submitting[0].attempts == 1
    assert start.submitting[0].payment_method == "pm_card_visa"  # decrypted, ready for the gateway
    [(early_id, seconds)] = start.not_yet_due
    assert early_id == early.pk
    assert 20 < seconds <= 30
    due.refresh_from_db()
    assert (due.status, due.attempts) == (Status.SUBMITTING, 1)
    assert due.lease_expires_at is not None
    assert events(due)[-1] == ("dispatched", "submitting", "due", 1)
    canceled.refresh_from_db()
    assert canceled.status == Status.CANCELED
    early.refresh_from_db()
    assert early.status == Status.DISPATCHED

    # a redelivered task changes nothing
    again = begin_submissions([due.pk], lease=timedelta(seconds=60), actor="system:worker")
    assert again.submitting == []
    due.refresh_from_db()
    assert due.attempts == 1


def test_begin_takes_a_due_retry_as_the_next_attempt(make_payment: MakePayment) -> None:
    payment = set_fields(
        make_payment(due_in=-60), status=Status.RETRY_SCHEDULED, attempts=1, next_attempt_at=timezone.now()
    )
    start = begin_submissions([payment.pk], lease=timedelta(seconds=60), actor="w")
    assert [(p.pk, p.attempts) for p in start.submitting] == [(payment.pk, 2)]
    assert events(payment)[-1] == ("retry_scheduled", "submitting", "retry", 2)


def test_outcomes_are_fenced_by_status_and_attempt(make_payment: MakePayment) -> None:
    # given two payments submitting at attempt 2
    fresh = set_fields(make_payment(due_in=-1), status=Status.SUBMITTING, attempts=2)
    moved_on = set_fields(make_payment(due_in=-1), status=Status.RECONCILING, attempts=2)

    # when outcomes arrive: one current, one stale (attempt 1), one for a payment the sweep moved on
    written = record_outcomes(
        [
            OutcomeWrite(fresh.pk, 1, Status.FAILED, "declined", failure_code="card_declined"),
            OutcomeWrite(fresh.pk, 2, Status.SUCCEEDED, "charged", gateway_reference="ch_1", data={"k": "v"}),
            OutcomeWrite(moved_on.pk, 2, Status.FAILED, "declined", failure_code="card_declined"),
        ],
        from_status=Status.SUBMITTING,
        actor="system:worker",
    )

    # then only the current one is written, with its event
    assert written == [fresh.pk]
    fresh.refresh_from_db()
    assert (fresh.status, fresh.gateway_reference, fresh.lease_expires_at) == (Status.SUCCEEDED, "ch_1", None)
    assert fresh.executed_at is not None
    event = PaymentEvent.objects.filter(payment=fresh).latest("id")
    assert (event.from_status, event.to_status, event.reason, event.attempt, event.data) == (
        "submitting",
        "succeeded",
        "charged",
        2,
        {"k": "v"},
    )
    moved_on.refresh_from_db()
    assert moved_on.status == Status.RECONCILING


def test_a_retryable_outcome_schedules_the_next_attempt(make_payment: MakePayment) -> None:
    payment = set_fields(make_payment(due_in=-1), status=Status.SUBMITTING, attempts=1)
    record_outcomes(
        [
            OutcomeWrite(
                payment.pk, 1, Status.RETRY_SCHEDULED, "retryable_failure", next_attempt_in=timedelta(seconds=10)
            )
        ],
        from_status=Status.SUBMITTING,
        actor="w",
    )
    payment.refresh_from_db()
    assert payment.status == Status.RETRY_SCHEDULED
    assert payment.next_attempt_at is not None
    assert timedelta(seconds=5) < payment.next_attempt_at - timezone.now() <= timedelta(seconds=10)


def test_an_illegal_transition_is_refused_before_any_write(make_payment: MakePayment) -> None:
    payment = set_fields(make_payment(due_in=-1), status=Status.SUCCEEDED, attempts=1)
    with pytest.raises(ValueError, match="not an allowed transition"):
        record_outcomes([OutcomeWrite(payment.pk, 1, Status.FAILED, "x")], from_status=Status.SUCCEEDED, actor="w")
    payment.refresh_from_db()
    assert payment.status == Status.SUCCEEDED


def test_an_expired_submission_goes_to_reconciliation_never_back_to_dispatch(make_payment: MakePayment) -> None:
    past = timezone.now() - timedelta(seconds=1)
    expired = set_fields(make_payment(due_in=-60), status=Status.SUBMITTING, attempts=1, lease_expires_at=past)
    live = set_fields(
        make_payment(due_in=-60),
        status=Status.SUBMITTING,
        attempts=1,
        lease_expires_at=timezone.now() + timedelta(seconds=60),
    )

    assert expire_submissions(limit=10, actor="system:sweep") == [expired.pk]

    expired.refresh_from_db()
    assert (expired.status, expired.attempts, expired.lease_expires_at) == (Status.RECONCILING, 1, None)
    assert expired.next_attempt_at is not None
    assert events(expired)[-1] == ("submitting", "reconciling", "lease_expired", 1)
    live.refresh_from_db()
    assert live.status == Status.SUBMITTING


def test_an_expired_dispatch_is_dispatched_again(make_payment: MakePayment) -> None:
    payment = make_payment(due_in=1)
    claim_due_payments(lookahead=LOOKAHEAD, lease=LEASE, limit=10, actor="t")
    assert redispatch_expired_payments(lease=LEASE, limit=10, actor="t") == []

    # the execution message was lost: its lease runs out
    release_dispatch_leases([payment.pk])
    claims = redispatch_expired_payments(lease=LEASE, limit=10, actor="system:sweep")

    assert [c.payment_id for c in claims] == [payment.pk]
    payment.refresh_from_db()
    assert payment.status == Status.DISPATCHED
    assert payment.lease_expires_at is not None
    assert payment.lease_expires_at > timezone.now() + LEASE - timedelta(seconds=5)
    assert events(payment)[-1] == ("dispatched", "dispatched", "lease_expired", 0)


def test_waiting_payments_are_leased_once(make_payment: MakePayment) -> None:
    now = timezone.now()
    due = set_fields(make_payment(due_in=-60), status=Status.RECONCILING, attempts=1, next_attempt_at=now)
    set_fields(
        make_payment(due_in=-60),
        status=Status.RECONCILING,
        attempts=1,
        next_attempt_at=now + timedelta(minutes=5),
    )

    first = claim_waiting_payments(status=Status.RECONCILING, lease=timedelta(seconds=60), limit=10)
    second = claim_waiting_payments(status=Status.RECONCILING, lease=timedelta(seconds=60), limit=10)

    assert [c.payment_id for c in first] == [due.pk]
    assert second == []
    due.refresh_from_db()
    assert due.status == Status.RECONCILING  # a lease, not a transition


# --- Plans with stale statistics -----------------------------------------------------------------------------
#
# With a constant status next to the ids, PostgreSQL can prove the partial indexes' predicates (status in …)
# and, when autoanalyze has not yet seen thousands of payments move to dispatched, scan one of them whole
# instead of probing the primary key once per id (docs/performance.md). Each statement is EXPLAINed, exactly
# as the code runs it, on such a table.

STALE_ROWS = 20_000
BATCH = 50
PKEY = "payments_payment_pkey"


def insert_copies(template: Payment, count: int) -> None:
    """``count`` copies of ``template`` (new ids), ``scheduled``, due in a year; one statement.

    Far from the sweep's due edge: the rolled-back rows stay in the partial indexes as dead
    entries until vacuum, and other tests measure what the sweep reads near that edge.
    """
    columns = [f.column for f in Payment._meta.concrete_fields if f.column]
    values = {
        "id": "gen_random_uuid()",
        "status": "'scheduled'",
        "scheduled_for": "now() + interval '365 days'",
        "attempts": "0",
        "lease_expires_at": "NULL",
        "next_attempt_at": "NULL",
    }
    exprs = [values.get(column, f"t.{column}") for column in columns]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO payments_payment ({', '.join(columns)}) "  # noqa: S608 - column names from the model
            f"SELECT {', '.join(exprs)} FROM payments_payment AS t, generate_series(1, %(count)s) AS g"
            " WHERE t.id = %(template)s",
            {"count": count, "template": template.pk},
        )


def payment_indexes_used(node: dict[str, Any], indexes: set[str], under_update: bool = False) -> list[tuple[str, bool]]:
    """(index or "Seq Scan", whether under an UPDATE of payments_payment) for each scan of payments_payment."""
    found: list[tuple[str, bool]] = []
    if node.get("Index Name") in indexes:
        found.append((node["Index Name"], under_update))
    elif node.get("Node Type") == "Seq Scan" and node.get("Relation Name") == "payments_payment":
        found.append(("Seq Scan", under_update))
    updates = node.get("Node Type") == "ModifyTable" and node.get("Relation Name") == "payments_payment"
    for child in node.get("Plans", []):
        # An UPDATE's own scan is its outer child; CTEs it reads hang under it as init plans.
        child_under_update = under_update or (updates and child.get("Parent Relationship") != "InitPlan")
        found += payment_indexes_used(child, indexes, child_under_update)
    return found


@pytest.mark.django_db  # rolled back: the copies, the statistics and their staleness
def test_batch_statements_probe_the_primary_key_even_with_stale_statistics(make_payment: MakePayment) -> None:
    # given a table analyzed while every payment was scheduled, then thousands dispatched (autoanalyze
    # cannot intervene: it would need our uncommitted rows, and ANALYZE holds its lock until the end)
    insert_copies(make_payment(due_in=-60), STALE_ROWS)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE payments_payment")
        cursor.execute(
            "UPDATE payments_payment SET status = 'dispatched', lease_expires_at = now() - interval '1 second'"
        )
        cursor.execute("SELECT id FROM payments_payment ORDER BY md5(id::text) LIMIT %s", [BATCH])
        ids = [row[0] for row in cursor.fetchall()]
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'payments_payment'")
        indexes = {row[0] for row in cursor.fetchall()}
    assert {PKEY, "payment_owner_pending_idx", "payment_lease_rescue_idx"} <= indexes

    n = len(ids)
    sql = state_machine.QUERIES
    by_id: dict[str, tuple[str, dict[str, Any]]] = {
        "release_dispatch_leases": (sql["release_dispatch_leases"], {"ids": ids}),
        "begin_submissions": (sql["begin_submissions"], {"ids": ids, "lease": LEASE, "actor": "w"}),
        "begin_submissions (not yet due)": (sql["not_yet_due"], {"ids": ids}),
        "record_outcomes": (
            sql["record_outcomes"],
            {
                "ids": ids,
                "attempts": [0] * n,
                "to": [Status.SUBMITTING] * n,
                "reasons": ["due"] * n,
                "refs": [""] * n,
                "codes": [""] * n,
                "messages": [""] * n,
                "delays": [None] * n,
                "data": ["{}"] * n,
                "dead_reasons": [""] * n,
                "from": Status.DISPATCHED,
                "actor": "w",
            },
        ),
        "reschedule": (
            sql["reschedule_waiting"],
            {"ids": ids, "attempts": [0] * n, "delays": [5.0] * n, "tried": [0] * n, "status": Status.DISPATCHED},
        ),
        "defer": (sql["defer"], {"ids": ids, "delay": LEASE, "actor": "w", "reason": "circuit_open"}),
    }
    # The sweep's statements search by status (a partial index, on purpose), then update what they locked.
    sweeps: dict[str, tuple[str, dict[str, Any]]] = {
        "claim_due": (sql["claim_due"], {"lookahead": LOOKAHEAD, "limit": 500, "lease": LEASE, "actor": "s"}),
        "redispatch_expired": (sql["redispatch_expired"], {"limit": 500, "lease": LEASE, "actor": "s"}),
        "expire_submissions": (sql["expire_submissions"], {"limit": 500, "actor": "s"}),
        "claim_waiting": (sql["claim_waiting"], {"status": Status.RETRY_SCHEDULED, "lease": LEASE, "limit": 500}),
    }

    def scans(statement: str, params: dict[str, Any]) -> list[tuple[str, bool]]:
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (FORMAT JSON) " + statement, params)
            document = cursor.fetchone()[0]
        data = json.loads(document) if isinstance(document, str) else document
        return payment_indexes_used(data[0]["Plan"], indexes)

    wrong = {}
    for name, (statement, params) in by_id.items():
        found = scans(statement, params)
        if not found or {index for index, _ in found} != {PKEY}:
            wrong[name] = found
    for name, (statement, params) in sweeps.items():
        found = scans(statement, params)
        if "Seq Scan" in {index for index, _ in found} or {i for i, upd in found if upd} != {PKEY}:
            wrong[name] = found

    # then every payment is found by its primary key, whatever the statistics say
    assert not wrong, "\n".join(f"{name}: {found}" for name, found in wrong.items())
