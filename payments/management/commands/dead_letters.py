"""``manage.py dead_letters list|show|retry|resolve``: operators' handling of dead-lettered payments.

docs/operations.md is the runbook. Every action is a service in ``payments/operations/services.py``:
one transaction, a ``PaymentEvent`` through the state machine and an ``AuditEvent`` naming
``--actor`` (default ``cli:<login name>``) and ``--reason``.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from common import actors
from payments.engine.retry_policy import DeadLetterReason, redrive_kind
from payments.models import DeadLetter
from payments.operations.services import (
    OperationRefused,
    Resolution,
    dead_letter_detail,
    dead_letter_redrive,
    dead_letter_resolve,
    dead_lettered_payments,
)


class Command(BaseCommand):
    help = "List, inspect, re-drive (retry) and resolve dead-lettered payments (docs/operations.md)."

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="action", required=True)

        listing = commands.add_parser("list", help="dead-lettered payments, oldest first")
        listing.add_argument("--reason", choices=[r.value for r in DeadLetterReason], default="")
        listing.add_argument("--limit", type=int, default=100)
        listing.add_argument("--messages", action="store_true", help="list recorded dead messages instead")
        listing.add_argument("--json", action="store_true", help="one JSON object per line")

        show = commands.add_parser("show", help="one payment: reason, attempts, timeline, audit trail (JSON)")
        show.add_argument("payment_id")

        retry = commands.add_parser("retry", help="re-drive: new attempt if proven uncharged, else reconcile first")
        retry.add_argument("payment_id")
        retry.add_argument("--reason", required=True, help="why (ticket, what was fixed); goes to the audit trail")
        retry.add_argument("--actor", default=actors.cli_login())

        resolve = commands.add_parser("resolve", help="end it by hand after checking the gateway's records")
        resolve.add_argument("payment_id")
        resolve.add_argument("--as", dest="outcome", required=True, choices=[r.value for r in Resolution])
        resolve.add_argument("--reference", default="", help="the gateway's charge id (required for succeeded)")
        resolve.add_argument("--reason", required=True, help="what you checked; goes to the audit trail")
        resolve.add_argument("--actor", default=actors.cli_login())

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        try:
            if action == "list":
                self._list(options)
            elif action == "show":
                self.stdout.write(json.dumps(dead_letter_detail(options["payment_id"]), indent=2, default=str))
            elif action == "retry":
                payment = dead_letter_redrive(
                    payment_id=options["payment_id"], actor=options["actor"], reason=options["reason"]
                )
                self.stdout.write(f"{payment.pk} re-driven: now {payment.status}")
            elif action == "resolve":
                payment = dead_letter_resolve(
                    payment_id=options["payment_id"],
                    actor=options["actor"],
                    outcome=options["outcome"],
                    reason=options["reason"],
                    reference=options["reference"],
                )
                self.stdout.write(f"{payment.pk} resolved: now {payment.status}")
        except OperationRefused as refused:
            raise CommandError(f"{refused.code}: {refused.message}") from None

    def _list(self, options: dict[str, Any]) -> None:
        limit = max(1, options["limit"])
        if options["messages"]:
            for message in DeadLetter.objects.all()[:limit]:
                row = {
                    "id": message.pk,
                    "received_at": message.received_at.isoformat(),
                    "task": message.task_name,
                    "task_id": message.task_id,
                    "queue": message.queue,
                    "reason": message.reason,
                    "count": message.death_count,
                    "payments": message.payment_ids,
                }
                self.stdout.write(json.dumps(row) if options["json"] else "  ".join(str(v) for v in row.values()))
            return
        payments = dead_lettered_payments(reason=options["reason"])[:limit]
        for payment in payments:
            row = {
                "id": str(payment.pk),
                "reason": payment.dead_letter_reason,
                "redrive": str(redrive_kind(payment.dead_letter_reason)),
                "attempts": payment.attempts,
                "amount": f"{payment.amount_display} {payment.currency}",
                "scheduled_for": payment.scheduled_for.isoformat(),
                "since": payment.updated_at.isoformat(),
            }
            self.stdout.write(json.dumps(row) if options["json"] else "  ".join(str(v) for v in row.values()))
