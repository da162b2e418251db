from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from payments.services import idempotency_purge_expired


class Command(BaseCommand):
    help = "Delete idempotency keys past their retention (IDEMPOTENCY_KEY_RETENTION); prints how many."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch-size", type=int, default=1000, help="rows per DELETE (default 1000)")

    def handle(self, *args: Any, **options: Any) -> None:
        deleted = idempotency_purge_expired(batch_size=options["batch_size"])
        self.stdout.write(f"Purged {deleted} expired idempotency key(s).")
