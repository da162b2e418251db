"""Auditors export the audit trail; the export is itself audited."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from accounts.models import User
from audit.models import AuditEvent
from audit.services import audit_record

pytestmark = pytest.mark.django_db

AUDIT_EVENTS = "/admin/audit/auditevent/"


@pytest.fixture
def trail(make_staff: Callable[..., User], staff_groups: None) -> list[AuditEvent]:
    target = make_staff(username="subject")
    return [
        audit_record(actor="cli:issue_token", action="api_token.issued", target=target, data={"user_id": target.pk}),
        audit_record(actor="staff:1", action="payment.canceled_by_staff", target=target, data={"reason": "duplicate"}),
    ]


def test_an_auditor_exports_selected_events_as_csv_from_the_admin(
    trail: list[AuditEvent], make_staff: Callable[..., User], verified_client: Callable[[User], Client]
) -> None:
    # Given an auditor in the admin
    auditor = make_staff("auditor")
    client = verified_client(auditor)
    # When they export the selected events
    response = client.post(AUDIT_EVENTS, {"action": "export_csv", "_selected_action": [str(e.pk) for e in trail]})
    # Then they get a CSV of exactly those events, oldest first
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [row["action"] for row in rows] == ["api_token.issued", "payment.canceled_by_staff"]
    assert json.loads(rows[1]["data"]) == {"reason": "duplicate"}
    # And the export itself is recorded
    assert AuditEvent.objects.filter(action="audit.exported", actor=f"staff:{auditor.pk}").count() == 1


def test_operations_staff_cannot_see_or_export_the_audit_trail(
    trail: list[AuditEvent], make_staff: Callable[..., User], verified_client: Callable[[User], Client]
) -> None:
    client = verified_client(make_staff("operations"))
    response = client.post(AUDIT_EVENTS, {"action": "export_csv", "_selected_action": [str(trail[0].pk)]})
    assert response.status_code == 403
    assert not AuditEvent.objects.filter(action="audit.exported").exists()


def test_the_export_command_writes_json_lines_in_a_window(
    trail: list[AuditEvent], make_staff: Callable[..., User]
) -> None:
    auditor = make_staff("auditor", username="ivy")
    out = StringIO()
    call_command("export_audit", "--as-user", "ivy", "--format", "jsonl", "--action", "api_token.issued", stdout=out)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["action"] for line in lines] == ["api_token.issued"]
    assert lines[0]["data"] == {"user_id": trail[0].data["user_id"]}
    assert AuditEvent.objects.filter(action="audit.exported", actor=f"cli:staff:{auditor.pk}").exists()


def test_the_export_command_refuses_staff_without_the_auditor_role(
    trail: list[AuditEvent], make_staff: Callable[..., User]
) -> None:
    make_staff("support", username="sam")
    with pytest.raises(CommandError, match="auditor role"):
        call_command("export_audit", "--as-user", "sam", stdout=StringIO())
