"""``manage.py ensure_schedules``: create or update the engine's beat schedule rows."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from payments.engine.execution import periodic_tasks_ensure


class Command(BaseCommand):
    help = "Create or update the periodic tasks of the execution engine (sweep, idempotency purge)."

    def handle(self, *args: Any, **options: Any) -> None:
        periodic_tasks_ensure()
        self.stdout.write("schedules ensured")
