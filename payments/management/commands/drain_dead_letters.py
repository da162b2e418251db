"""``manage.py drain_dead_letters``: record what RabbitMQ dead-lettered (also a periodic task)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from payments.operations.broker_dead_letters import DRAIN_LIMIT, dead_letters_drain


class Command(BaseCommand):
    help = "Record each message of the dead_letter queue as a DeadLetter row, then acknowledge it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--limit", type=int, default=DRAIN_LIMIT)

    def handle(self, *args: Any, **options: Any) -> None:
        recorded = dead_letters_drain(limit=max(1, options["limit"]))
        self.stdout.write(f"{recorded} dead-lettered message(s) recorded")
