"""Recompute ``Payment.payee_account_hmac`` (support's search by payee account) under ``FIELD_HMAC_KEY``.

When to run it (docs/security.md §2):

* ``--missing-only`` after deploying migration 0003 while the previous release was
  still writing (its rows got ``""``), or whenever ``--check`` reports empty values;
* without options after changing ``FIELD_HMAC_KEY`` (every value changes). Until it
  has finished, search by account misses the rows not yet rehashed; nothing else is
  affected.

It walks the table by primary key in batches, decrypting each account through the
model and writing only the rows whose value differs, with an ``UPDATE`` of that one
column (no ``save()``, ``updated_at`` untouched), one transaction per batch. It is
resumable: stopping it loses nothing. ``--check`` writes nothing and exits 1 while a
value is empty or (without ``--missing-only``) stale.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from common.crypto import payee_account_hmac
from payments.models import Payment


class Command(BaseCommand):
    help = "Recompute the payee-account search HMACs under FIELD_HMAC_KEY (resumable, in batches)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch-size", type=int, default=500)
        parser.add_argument("--missing-only", action="store_true", help="Only rows without a value yet.")
        parser.add_argument("--check", action="store_true", help="Write nothing; exit 1 if any row needs work.")

    def handle(self, *args: Any, batch_size: int, missing_only: bool, check: bool, **options: Any) -> None:
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        rows = Payment.objects.order_by("pk")
        if missing_only:
            rows = rows.filter(payee_account_hmac="")
        last_pk = None
        seen = changed = 0
        while True:
            batch_rows = rows if last_pk is None else rows.filter(pk__gt=last_pk)
            batch = list(batch_rows.only("pk", "payee_account", "payee_account_hmac")[:batch_size])
            if not batch:
                break
            stale = []
            for payment in batch:
                expected = payee_account_hmac(payment.payee_account)
                if payment.payee_account_hmac != expected:
                    payment.payee_account_hmac = expected
                    stale.append(payment)
            if stale and not check:
                with transaction.atomic():
                    Payment.objects.bulk_update(stale, ["payee_account_hmac"])
            seen += len(batch)
            changed += len(stale)
            last_pk = batch[-1].pk
        if check:
            if changed:
                self.stdout.write(f"{changed} of {seen} payment(s) need their payee-account HMAC recomputed.")
                raise SystemExit(1)
            self.stdout.write(f"Every payee-account HMAC is current ({seen} payment(s) checked).")
            return
        self.stdout.write(f"Recomputed {changed} of {seen} payee-account HMAC(s).")
