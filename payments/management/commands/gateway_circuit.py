"""``manage.py gateway_circuit [show|close]``: the gateway circuit breaker's state, or close it by hand."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from common import actors
from payments.engine.circuit import circuit_reset
from payments.models import GatewayCircuit


class Command(BaseCommand):
    help = "Show the gateway circuit breakers, or close one by hand once the gateway is known to be back."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", nargs="?", choices=["show", "close"], default="show")
        parser.add_argument("--gateway", default="", help="default: settings.GATEWAY_BACKEND")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "close":
            name = options["gateway"] or str(settings.GATEWAY_BACKEND).strip().lower()
            circuit_reset(name, actor=actors.cli_login())
        for circuit in GatewayCircuit.objects.order_by("name"):
            row = {
                "gateway": circuit.name,
                "state": circuit.state,
                "opened_until": circuit.opened_until.isoformat() if circuit.opened_until else None,
                "window_calls": circuit.window_calls,
                "window_failures": circuit.window_failures,
                "window_started_at": circuit.window_started_at.isoformat(),
                "changed_at": circuit.changed_at.isoformat(),
            }
            self.stdout.write(json.dumps(row))
