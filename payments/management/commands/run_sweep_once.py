"""``manage.py run_sweep_once``: one sweep, in this process (operators, demos, debugging)."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand

from payments.engine.execution import payments_sweep


class Command(BaseCommand):
    help = "Run one sweep now: claim due payments and publish their execution tasks; prints the report."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(json.dumps(payments_sweep().as_dict()))
