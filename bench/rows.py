"""Payments written straight into the table: the sweep's backlog, due rows for the profile, ``--create-via sql``.

Each is a copy of a *template* payment created by the service the API uses
(``payment_create``), so encrypted fields, the payee HMAC and every column the
model has are real; only the id, due instant, status and timestamps differ.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .context import Bench

# Due-instant expressions in ``g`` (1..count): constants of this module, never user input.
DUE_NOW_SQL = "now() - interval '1 second'"
FUTURE_SQL = "now() + interval '1 day' + g * interval '30 seconds'"
# Parameters: %(start)s (timestamptz) and %(step)s (seconds between consecutive payments).
SPACED_SQL = "%(start)s::timestamptz + (g - 1) * %(step)s * interval '1 second'"


class IdSequence:
    """Time-ordered ids for inserted rows: milliseconds from a month ago, never reused."""

    def __init__(self) -> None:
        self.next = int(time.time() * 1000) - 30 * 24 * 3600 * 1000

    def take(self, count: int) -> int:
        base = self.next
        self.next += count + 1
        return base


def template_payment(b: Bench, owner_id: int | None = None) -> str:
    """A payment created by the API's service, due in 400 days (never executed by a run)."""
    from accounts.models import User
    from payments.services import PaymentDraft, payment_create

    owner = User.objects.get(pk=owner_id if owner_id is not None else b.user_ids[0])
    scheduled_for = datetime.now(UTC) + timedelta(days=400)
    draft = PaymentDraft(
        amount_minor=1234,
        currency="EUR",
        payment_method="pm_card_visa",
        payee_name="Bench Utilities",
        payee_account="DE89370400440532013000",
        description="benchmark",
        metadata={},
        scheduled_for=scheduled_for,
        time_zone="UTC",
        scheduled_local=scheduled_for.isoformat(),
    )
    return str(payment_create(owner=owner, data=draft, actor="bench").pk)


def insert_payments(
    b: Bench,
    template_id: str,
    count: int,
    *,
    due_sql: str,
    id_seq: int,
    returning: bool,
    params: dict[str, Any] | None = None,
    with_events: bool = False,
) -> list[str]:
    """``count`` copies of the template payment, scheduled by ``due_sql`` (one of this module's constants).

    Ids are time-ordered (UUIDv7 layout) from ``id_seq``, so they land at the right edge of the primary
    key as the API's do. ``with_events`` also writes each payment's first timeline event, as the API does.
    """
    from payments.models import Payment

    columns = [f.column for f in Payment._meta.concrete_fields if f.column]
    exprs = []
    for column in columns:
        if column == "id":
            exprs.append(
                "(lpad(to_hex(%(id_base)s::bigint + g), 12, '0') || '7' || substr(md5(g::text), 1, 3) || '8'"
                " || substr(md5(g::text), 4, 15))::uuid"
            )
        elif column == "scheduled_for":
            exprs.append(due_sql)
        elif column == "status":
            exprs.append("'scheduled'")
        elif column in ("created_at", "updated_at"):
            exprs.append("now()")
        elif column in ("lease_expires_at", "next_attempt_at", "executed_at", "canceled_at"):
            exprs.append("NULL")
        elif column == "attempts":
            exprs.append("0")
        else:
            exprs.append(f"t.{column}")
    statement = (
        f"INSERT INTO payments_payment ({', '.join(columns)}) "  # noqa: S608 - column names from the model
        f"SELECT {', '.join(exprs)} FROM payments_payment AS t, generate_series(1, %(count)s) AS g "
        "WHERE t.id = %(template)s"
    )
    if with_events:
        statement = (
            f"WITH new AS ({statement} RETURNING id, created_at) "  # noqa: S608 - built above from constants
            "INSERT INTO payments_paymentevent (payment_id, at, from_status, to_status, reason, actor, attempt, data)"
            " SELECT id, created_at, '', 'scheduled', 'created', 'bench', 0, '{}'::jsonb FROM new RETURNING payment_id"
        )
    elif returning:
        statement += " RETURNING id"
    values = {"id_base": id_seq, "count": count, "template": template_id, **(params or {})}
    if not (returning or with_events):
        b.execute(statement, values)
        return []
    rows = b.query(statement, values)
    return [str(row[0]) for row in rows] if returning else []
