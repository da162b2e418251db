"""Run by tests/test_embedded_default.py in a process of its own, on the embedded default.

With ``DATABASE_URL`` unset the process starts the embedded PostgreSQL itself (as every
``manage.py`` command does); this drives the API (token look-up, idempotency, per-user
limits) the way ``make run`` serves it, executes one payment through the sandbox gateway,
and prints what it saw as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, date, datetime, timedelta

import django


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
    django.setup()
    from django.core.management import call_command
    from django.test import Client

    from accounts.models import User
    from accounts.services import token_issue

    call_command("migrate", verbosity=0)
    user = User.objects.create_user(username="embedded")
    token = token_issue(user=user, actor="probe").raw
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    seen: dict[str, object] = {}

    def create(key: str, amount: str, due: str) -> tuple[int, dict[str, str], dict[str, object]]:
        body = {
            "amount": amount,
            "currency": "EUR",
            "payment_method": "pm_card_visa",
            "payee": {"name": "ACME", "account": "DE21370400440532014321"},
            "scheduled_for": due,
        }
        response = client.post(
            "/api/v1/payments", json.dumps(body), content_type="application/json", HTTP_IDEMPOTENCY_KEY=key
        )
        return response.status_code, dict(response.headers), json.loads(response.content)

    # The daily limit (PAYMENTS_MAX_DAILY_AMOUNT=100, set by the test) counts per UTC day:
    # 23:00 and the next midnight are two days; noon of the second day then exceeds it.
    day = date.today() + timedelta(days=30)
    evening, midnight, noon = (
        f"{day}T23:00:00Z",
        f"{day + timedelta(days=1)}T00:00:00Z",
        f"{day + timedelta(days=1)}T12:00:00Z",
    )
    first = create("k-1", "60.00", evening)
    seen["create"] = first[0]
    assert first[0] == 201, first
    seen["replay"] = create("k-1", "60.00", evening)[:2]
    seen["replayed_same_id"] = create("k-1", "60.00", evening)[2].get("id") == first[2]["id"]
    seen["reused"] = create("k-1", "61.00", evening)[2].get("code")
    seen["midnight"] = create("k-2", "60.00", midnight)[0]
    seen["over_limit"] = create("k-3", "50.00", noon)[2].get("code")
    seen["get"] = client.get(f"/api/v1/payments/{first[2]['id']}").status_code
    seen["get_again"] = client.get(f"/api/v1/payments/{first[2]['id']}").status_code  # last_used_at recorded
    seen["cancel"] = json.loads(client.post(f"/api/v1/payments/{first[2]['id']}/cancel").content).get("status")
    seen["bad_token"] = Client(HTTP_AUTHORIZATION="Bearer spt_wrong").get("/api/v1/payments").status_code
    seen["vendor"] = django.db.connection.vendor
    seen["socket_dir"] = django.db.connection.get_connection_params()["host"]
    seen["executed"] = _execute_one(create)
    json.dump(seen, sys.stdout)


def _execute_one(create: object) -> str:
    """A payment due in two seconds, swept and executed in this process; its public status."""
    from payments.engine.execution import payments_execute, payments_sweep
    from payments.models import Payment

    due = datetime.now(UTC) + timedelta(seconds=2)
    status, _, body = create("k-due", "5.00", due.isoformat().replace("+00:00", "Z"))  # type: ignore[operator]
    assert status == 201, body
    payment_id = body["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if datetime.now(UTC) >= due:
            payments_sweep()
            payments_execute([payment_id])
            public = Payment.objects.get(pk=payment_id).public_status
            if public != "scheduled":
                return str(public)
        time.sleep(0.2)
    return "still scheduled after 60 s"


if __name__ == "__main__":
    main()
