from __future__ import annotations

from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils.dateparse import parse_datetime

from accounts.models import User
from audit.models import AuditEvent
from audit.services import audit_export, audit_record
from common import actors


def _instant(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    parsed = parse_datetime(value)
    if parsed is None or parsed.tzinfo is None:
        raise CommandError(f"--{name} must be an ISO 8601 instant with an offset, e.g. 2027-01-01T00:00:00Z")
    return parsed


class Command(BaseCommand):
    help = "Export the audit trail (oldest first) as CSV or JSON lines to stdout, for auditors."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--since", help="from this instant (inclusive)")
        parser.add_argument("--until", help="to this instant (exclusive)")
        parser.add_argument("--action", help="only this action, e.g. api_token.issued")
        parser.add_argument("--format", choices=["csv", "jsonl"], default="csv")
        parser.add_argument("--as-user", required=True, help="the staff username doing the export (recorded)")

    def handle(self, *args: Any, **options: Any) -> None:
        exporter = User.objects.filter(username=options["as_user"], is_staff=True).first()
        if exporter is None:
            raise CommandError("--as-user must name a staff user")
        if not exporter.has_perm("audit.view_auditevent"):
            raise CommandError(f"{exporter.username} may not read the audit trail (needs the auditor role)")
        events = AuditEvent.objects.order_by("at", "id")
        since, until = _instant(options["since"], "since"), _instant(options["until"], "until")
        if since:
            events = events.filter(at__gte=since)
        if until:
            events = events.filter(at__lt=until)
        if options["action"]:
            events = events.filter(action=options["action"])
        with transaction.atomic():
            count = audit_export(events=events.iterator(chunk_size=2000), stream=self.stdout, fmt=options["format"])
            audit_record(
                actor=actors.cli(actors.staff(exporter.pk)),
                action="audit.exported",
                target=exporter,
                data={"count": count, "format": options["format"]},
            )
