"""Operators' services, commands and admin for dead-lettered payments: audited, and only the safe re-drive."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from datetime import timedelta
from io import StringIO
from types import SimpleNamespace
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import User
from accounts.services import token_issue
from audit.models import AuditEvent
from payments.engine.retry_policy import DeadLetterReason
from payments.models import Payment, PaymentEvent
from payments.operations.services import OperationRefused, dead_letter_redrive, dead_letter_resolve
from payments.statuses import Status

from .conftest import MakePayment

pytestmark = pytest.mark.django_db
CHANGELIST = "/admin/payments/deadletteredpayment/"


def dead_lettered(make_payment: MakePayment, reason: str, *, attempts: int = 2, **fields: Any) -> Payment:
    payment = make_payment(due_in=-60)
    Payment.objects.filter(pk=payment.pk).update(
        status=Status.DEAD_LETTERED, attempts=attempts, dead_letter_reason=reason, **fields
    )
    payment.refresh_from_db()
    return payment


def submitted(payment: Payment, *, ago: timedelta) -> None:
    """The timeline's record of when the payment's current attempt went to the gateway."""
    PaymentEvent.objects.create(
        payment=payment,
        at=timezone.now() - ago,
        from_status=Status.DISPATCHED,
        to_status=Status.SUBMITTING,
        reason="due",
        actor="t",
        attempt=payment.attempts,
    )


def audit(payment: Payment) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(target_type="payments.payment", target_id=str(payment.pk)))


# --- Services ------------------------------------------------------------------------------------------


def test_a_payment_out_of_retries_is_redriven_with_a_new_attempt_and_a_fresh_budget(make_payment: MakePayment) -> None:
    payment = dead_lettered(make_payment, DeadLetterReason.RETRIES_EXHAUSTED, attempts=5)

    dead_letter_redrive(payment_id=payment.pk, actor="staff:7", reason="INC-12: gateway back")

    payment.refresh_from_db()
    assert payment.status == Status.RETRY_SCHEDULED
    assert payment.next_attempt_at is not None
    assert payment.next_attempt_at <= timezone.now()
    assert (payment.redrive_attempt, payment.dead_letter_reason) == (5, "")
    assert payment.redriven_at is not None
    event = PaymentEvent.objects.filter(payment=payment).last()
    assert event is not None
    assert (event.from_status, event.to_status, event.reason, event.actor) == (
        "dead_lettered",
        "retry_scheduled",
        "operator_redrive",
        "staff:7",
    )
    [row] = audit(payment)
    assert (row.actor, row.action) == ("staff:7", "payment.dead_letter_redriven")
    assert row.data["route"] == "new_attempt"
    assert row.data["reason"] == "INC-12: gateway back"


def test_a_payment_whose_outcome_may_have_charged_is_redriven_through_reconciliation(
    make_payment: MakePayment,
) -> None:
    payment = dead_lettered(make_payment, DeadLetterReason.RECONCILIATION_INCONCLUSIVE, reconcile_attempts=9)
    submitted(payment, ago=timedelta(hours=2))

    dead_letter_redrive(payment_id=payment.pk, actor="staff:7", reason="INC-13")

    payment.refresh_from_db()
    # the same attempt, the same key: never a blind new one
    assert (payment.status, payment.attempts, payment.reconcile_attempts) == (Status.RECONCILING, 2, 0)
    assert audit(payment)[0].data["route"] == "reconcile"


def test_a_redrive_past_the_keys_retention_is_refused(make_payment: MakePayment, settings: Any) -> None:
    settings.GATEWAY_IDEMPOTENCY_RETENTION_HOURS = 24
    payment = dead_lettered(make_payment, DeadLetterReason.NEEDS_OPERATOR)
    submitted(payment, ago=timedelta(hours=23))  # past 90 % of 24 h

    with pytest.raises(OperationRefused) as refused:
        dead_letter_redrive(payment_id=payment.pk, actor="staff:7", reason="try")

    assert refused.value.code == "retention_expired"
    payment.refresh_from_db()
    assert payment.status == Status.DEAD_LETTERED
    assert audit(payment) == []


@pytest.mark.parametrize(
    ("status", "reason", "code"),
    [
        (Status.SUCCEEDED, "", "not_dead_lettered"),
        (Status.RECONCILING, "", "not_dead_lettered"),
        (Status.DEAD_LETTERED, DeadLetterReason.CHARGE_MISMATCH, "redrive_refused"),
    ],
)
def test_an_illegal_redrive_is_refused_and_changes_nothing(
    make_payment: MakePayment, status: str, reason: str, code: str
) -> None:
    payment = dead_lettered(make_payment, reason)
    Payment.objects.filter(pk=payment.pk).update(status=status)

    with pytest.raises(OperationRefused) as refused:
        dead_letter_redrive(payment_id=payment.pk, actor="staff:7", reason="try")

    assert refused.value.code == code
    payment.refresh_from_db()
    assert payment.status == status
    assert not PaymentEvent.objects.filter(payment=payment, reason="operator_redrive").exists()
    assert audit(payment) == []


def test_a_reason_is_required(make_payment: MakePayment) -> None:
    payment = dead_lettered(make_payment, DeadLetterReason.RETRIES_EXHAUSTED)
    with pytest.raises(OperationRefused, match="reason"):
        dead_letter_redrive(payment_id=payment.pk, actor="staff:7", reason="   ")


def test_resolving_as_succeeded_needs_the_gateways_reference(make_payment: MakePayment) -> None:
    payment = dead_lettered(make_payment, DeadLetterReason.NEEDS_OPERATOR)
    with pytest.raises(OperationRefused) as refused:
        dead_letter_resolve(payment_id=payment.pk, actor="staff:7", outcome="succeeded", reason="checked")
    assert refused.value.code == "reference_required"

    dead_letter_resolve(
        payment_id=payment.pk, actor="staff:7", outcome="succeeded", reason="found in dashboard", reference="ch_42"
    )

    payment.refresh_from_db()
    assert (payment.status, payment.gateway_reference) == (Status.SUCCEEDED, "ch_42")
    assert payment.executed_at is not None
    [row] = audit(payment)
    assert (row.action, row.data["as"], row.data["gateway_reference"]) == (
        "payment.dead_letter_resolved",
        "succeeded",
        "ch_42",
    )


def test_a_payment_resolved_as_failed_tells_the_payer_why_without_internals(make_payment: MakePayment) -> None:
    payment = dead_lettered(make_payment, DeadLetterReason.NEEDS_OPERATOR)
    owner_api = APIClient()
    owner_api.credentials(HTTP_AUTHORIZATION=f"Bearer {token_issue(user=payment.owner, actor='test').raw}")

    # while dead-lettered the payer sees "processing", no failure
    body = owner_api.get(f"/api/v1/payments/{payment.pk}").json()
    assert (body["status"], body["failure"]) == ("processing", None)

    dead_letter_resolve(
        payment_id=payment.pk, actor="staff:7", outcome="failed", reason="idempotency key reused by ops script"
    )

    body = owner_api.get(f"/api/v1/payments/{payment.pk}").json()
    assert body["status"] == "failed"
    assert body["failure"] == {
        "code": "processing_failed",
        "message": "The payment could not be completed. Nothing was charged.",
    }
    assert "idempotency" not in json.dumps(body)  # the operator's reason stays in the audit trail


def test_a_gateway_rejection_resolved_as_failed_keeps_its_safe_code(make_payment: MakePayment) -> None:
    payment = dead_lettered(
        make_payment,
        DeadLetterReason.GATEWAY_REJECTED,
        failure_code="gateway_rejected",
        failure_message="The payment could not be processed. Our team has been notified.",
    )
    dead_letter_resolve(payment_id=payment.pk, actor="staff:7", outcome="failed", reason="amount invalid for gateway")
    payment.refresh_from_db()
    assert (payment.status, payment.failure_code) == (Status.FAILED, "gateway_rejected")


# --- Commands -------------------------------------------------------------------------------------------------


def test_the_dead_letters_command_lists_shows_retries_and_resolves(make_payment: MakePayment) -> None:
    first = dead_lettered(make_payment, DeadLetterReason.RETRIES_EXHAUSTED)
    second = dead_lettered(make_payment, DeadLetterReason.NEEDS_OPERATOR)
    submitted(second, ago=timedelta(minutes=5))

    out = StringIO()
    call_command("dead_letters", "list", "--json", stdout=out)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert {(r["id"], r["reason"], r["redrive"]) for r in rows} == {
        (str(first.pk), "retries_exhausted", "new_attempt"),
        (str(second.pk), "needs_operator", "reconcile"),
    }

    out = StringIO()
    call_command("dead_letters", "show", str(second.pk), stdout=out)
    shown = json.loads(out.getvalue())
    assert (shown["dead_letter_reason"], shown["idempotency_key"]) == ("needs_operator", f"pay_{second.pk}_2")
    assert "payee" not in out.getvalue()
    assert "pm_card" not in out.getvalue()

    call_command("dead_letters", "retry", str(first.pk), "--reason", "INC-1", "--actor", "cli:ops", stdout=StringIO())
    call_command(
        "dead_letters",
        "resolve",
        str(second.pk),
        "--as",
        "succeeded",
        "--reference",
        "ch_9",
        "--reason",
        "INC-2",
        "--actor",
        "cli:ops",
        stdout=StringIO(),
    )
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, second.status) == (Status.RETRY_SCHEDULED, Status.SUCCEEDED)
    assert AuditEvent.objects.filter(actor="cli:ops").count() == 2

    with pytest.raises(CommandError, match="not_dead_lettered"):
        call_command("dead_letters", "retry", str(first.pk), "--reason", "again", stdout=StringIO())


# --- Admin ------------------------------------------------------------------------------------------------------


@pytest.fixture
def roles() -> None:
    """The role groups and this feature's grants, from the migrations' own code (a flush may have removed them)."""
    loader = MigrationLoader(None, ignore_no_migrations=True)
    schema_editor = SimpleNamespace(connection=connection)
    roles = importlib.import_module("accounts.migrations.0002_staff_roles")
    roles.create_roles(loader.project_state(("accounts", "0002_staff_roles")).apps, schema_editor)
    grants = importlib.import_module("payments.migrations.0004_reconcile_schedule")
    grants.create_schedule_and_grants(loader.project_state(("payments", "0004_reconcile_schedule")).apps, schema_editor)


@pytest.fixture
def staff_client(verified_client: Callable[[User], Client]) -> Callable[[str], Client]:
    """A verified client of a new staff member in ``group``."""

    def make(group: str) -> Client:
        user = User.objects.create_user(username=f"{group}-1", password="x" * 16, is_staff=True)
        user.groups.add(Group.objects.get(name=group))
        return verified_client(user)

    return make


def test_operations_redrive_from_the_admin_with_a_reason(
    roles: None, make_payment: MakePayment, staff_client: Callable[[str], Client]
) -> None:
    payment = dead_lettered(make_payment, DeadLetterReason.RETRIES_EXHAUSTED)
    other = make_payment(due_in=60)  # not dead-lettered: not listed
    client = staff_client("operations")

    listing = client.get(CHANGELIST)
    assert listing.status_code == 200
    assert str(payment.pk) in listing.content.decode()
    assert str(other.pk) not in listing.content.decode()

    # the action first asks for a reason ...
    confirm = client.post(CHANGELIST, {"action": "redrive_selected", "_selected_action": [str(payment.pk)]})
    assert confirm.status_code == 200
    assert b"reason" in confirm.content
    # ... then re-drives, audited under the staff member
    done = client.post(
        CHANGELIST,
        {"action": "redrive_selected", "_selected_action": [str(payment.pk)], "apply": "1", "reason": "INC-5"},
    )
    assert done.status_code == 302
    payment.refresh_from_db()
    assert payment.status == Status.RETRY_SCHEDULED
    assert audit(payment)[0].data["reason"] == "INC-5"


def test_support_cannot_see_or_redrive_dead_letters(
    roles: None, make_payment: MakePayment, staff_client: Callable[[str], Client]
) -> None:
    payment = dead_lettered(make_payment, DeadLetterReason.RETRIES_EXHAUSTED)
    client = staff_client("support")

    assert client.get(CHANGELIST).status_code == 403
    client.post(
        CHANGELIST,
        {"action": "redrive_selected", "_selected_action": [str(payment.pk)], "apply": "1", "reason": "x"},
    )
    payment.refresh_from_db()
    assert payment.status == Status.DEAD_LETTERED


def test_resolving_as_failed_is_refused_while_a_reconciliation_may_still_be_re_sending(
    make_payment: MakePayment, settings: Any
) -> None:
    # given a payment a reconciliation just dead-lettered (an earlier reconcile task, whose lease ran
    # out mid-work, may still have its re-send in flight for up to SUBMIT_LEASE)
    from payments.state_machine import OutcomeWrite, record_outcomes

    payment = make_payment(due_in=-60)
    Payment.objects.filter(pk=payment.pk).update(status=Status.RECONCILING, attempts=1)
    written = record_outcomes(
        [
            OutcomeWrite(
                payment.pk,
                1,
                Status.DEAD_LETTERED,
                "reconciliation_inconclusive",
                dead_letter_reason=DeadLetterReason.RECONCILIATION_INCONCLUSIVE,
            )
        ],
        from_status=Status.RECONCILING,
        actor="system:reconciler",
    )
    assert written == [payment.pk]

    # when an operator resolves it as failed at once
    with pytest.raises(OperationRefused) as refused:
        dead_letter_resolve(payment_id=payment.pk, actor="staff:1", outcome="failed", reason="INC-9 no charge")

    # then it is refused, with the reason and the instant it becomes possible
    assert refused.value.code == "reconcile_lease_live"
    assert "re-sending" in refused.value.message
    payment.refresh_from_db()
    assert payment.status == Status.DEAD_LETTERED

    # and once the lease has passed, the same resolution goes through
    PaymentEvent.objects.filter(payment=payment, to_status=Status.DEAD_LETTERED).update(
        at=timezone.now() - settings.SUBMIT_LEASE - timedelta(seconds=1)
    )
    dead_letter_resolve(payment_id=payment.pk, actor="staff:1", outcome="failed", reason="INC-9 no charge")
    payment.refresh_from_db()
    assert payment.status == Status.FAILED
