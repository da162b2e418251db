from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from uuid6 import uuid7

from .currencies import format_minor_units
from .fields import SensitiveJSONField, SensitiveTextField
from .statuses import Status, public_status


def new_payment_id() -> uuid.UUID:
    # Time-ordered ids keep inserts at the right edge of the primary-key index.
    return uuid.UUID(str(uuid7()))


class Payment(models.Model):
    id = models.UUIDField(primary_key=True, default=new_payment_id, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="payments")

    amount_minor = models.BigIntegerField(help_text="Amount in the currency's minor units (exact).")
    currency = models.CharField(max_length=3)
    payee_name = SensitiveTextField()
    payee_account = SensitiveTextField()
    payee_account_last4 = models.CharField(max_length=4)
    # HMAC-SHA256 of the normalised account under FIELD_HMAC_KEY (common.crypto.payee_account_hmac):
    # support's exact-match search, without the account in clear. "" until backfilled (migration 0003,
    # manage.py rehash_payee_accounts); db_default so rows inserted by older code still insert.
    # Indexed by payment_payee_account_hmac_idx (one btree; db_index=True would add a useless LIKE index).
    payee_account_hmac = models.CharField(max_length=64, default="", db_default="", editable=False)
    description = SensitiveTextField(blank=True, default="")
    metadata = SensitiveJSONField(default=dict, blank=True)
    payment_method = SensitiveTextField(help_text="The gateway's token for the payer's payment method.")

    scheduled_for = models.DateTimeField(help_text="The due instant, UTC.")
    time_zone = models.CharField(max_length=64, help_text="IANA zone the user scheduled in.")
    scheduled_local = models.CharField(max_length=40, help_text="The wall time with offset the user meant.")

    status = models.CharField(max_length=20, choices=Status.choices, default=Status.SCHEDULED)
    # The fencing token: incremented each time a gateway attempt begins; every
    # write of an attempt's outcome is guarded by it.
    attempts = models.PositiveIntegerField(default=0)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    gateway_reference = models.CharField(max_length=100, blank=True, default="")
    failure_code = models.CharField(max_length=64, blank=True, default="")
    failure_message = models.CharField(max_length=255, blank=True, default="")
    # Failure handling (payments/engine/retry_policy.py). db_default: rows inserted by raw SQL still insert.
    # Inconclusive reconciliation tries of the current attempt: the rung of the reconcile ladder.
    reconcile_attempts = models.PositiveIntegerField(default=0, db_default=0)
    # Why the engine gave up (retry_policy.DeadLetterReason), set with status dead_lettered; operators only.
    dead_letter_reason = models.CharField(max_length=64, blank=True, default="", db_default="")
    # An operator's re-drive starts a fresh retry budget: attempts and age count from here.
    redrive_attempt = models.PositiveIntegerField(default=0, db_default=0)
    redriven_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)
    executed_at = models.DateTimeField(null=True, blank=True)
    canceled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            # The sweep: "WHERE status = 'scheduled' AND scheduled_for <= now() + lookahead
            # ORDER BY scheduled_for LIMIT n FOR UPDATE SKIP LOCKED". Partial, so far-future
            # payments cost nothing beyond their own entry, and finished payments none at all.
            models.Index(fields=["scheduled_for"], condition=Q(status="scheduled"), name="payment_due_sweep_idx"),
            # Rescue of claims whose lease expired (lost message, killed worker).
            models.Index(
                fields=["lease_expires_at"],
                condition=Q(status__in=["dispatched", "submitting", "reconciling", "retry_scheduled"]),
                name="payment_lease_rescue_idx",
            ),
            # Retries wake up at next_attempt_at.
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status__in=["retry_scheduled", "reconciling"]),
                name="payment_retry_due_idx",
            ),
            # A user's listing: "WHERE owner_id = ? ORDER BY scheduled_for, id" with keyset pagination.
            # Also the per-user daily-amount limit (owner, one UTC day of scheduled_for).
            models.Index(fields=["owner", "scheduled_for", "id"], name="payment_owner_listing_idx"),
            # Support's search by payee account (exact HMAC match).
            models.Index(fields=["payee_account_hmac"], name="payment_payee_account_hmac_idx"),
            # The per-user pending limit: "count(*) WHERE owner_id = ? AND status IN (scheduled, dispatched)",
            # an index-only scan over at most the limit's worth of entries, whatever the user's history.
            models.Index(
                fields=["owner"],
                condition=Q(status__in=["scheduled", "dispatched"]),
                name="payment_owner_pending_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"Payment {self.id} ({self.status})"

    @property
    def public_status(self) -> str:
        return public_status(self.status)

    @property
    def amount_display(self) -> str:
        return format_minor_units(self.amount_minor, self.currency)

    def gateway_idempotency_key(self, attempt: int | None = None) -> str:
        """One key per (payment, attempt): a retry of the same attempt reuses it, the gateway deduplicates."""
        return f"pay_{self.id}_{self.attempts if attempt is None else attempt}"


class PaymentEvent(models.Model):
    """One row per state transition, written in the transaction that made it."""

    payment = models.ForeignKey(Payment, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(default=timezone.now)
    from_status = models.CharField(max_length=20, choices=Status.choices, blank=True, default="")
    to_status = models.CharField(max_length=20, choices=Status.choices)
    reason = models.CharField(max_length=100)
    actor = models.CharField(max_length=100)
    attempt = models.PositiveIntegerField(default=0)
    # Codes and references only; never personal data.
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["payment", "at", "id"], name="payment_event_timeline_idx")]

    def __str__(self) -> str:
        return f"{self.payment_id}: {self.from_status or '∅'} → {self.to_status} ({self.reason})"


class IdempotencyRecord(models.Model):
    """A client's ``Idempotency-Key`` (as its HMAC) and the response it got, stored with the work it protected."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    # HMAC-SHA256 of the key under FIELD_HMAC_KEY (common.crypto.idempotency_key_hmac), never the key:
    # a key may hold anything a client chose, a card number included.
    key_hmac = models.CharField(max_length=64)
    # SHA-256 of method, path and the canonical JSON body: compared, never the body itself.
    fingerprint = models.CharField(max_length=64)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = SensitiveJSONField(null=True, blank=True)
    payment = models.ForeignKey(Payment, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True, help_text="Purged after this instant.")

    class Meta:
        constraints = [
            # Keys are scoped to the user; this constraint is what makes a parallel duplicate lose.
            models.UniqueConstraint(fields=["user", "key_hmac"], name="idempotency_user_key_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id}:{self.key_hmac[:12]}… ({self.response_status})"


# --- Failure handling: operators' views, dead messages, the circuit breaker (docs/operations.md) ---------


class DeadLetteredPaymentManager(models.Manager["DeadLetteredPayment"]):
    def get_queryset(self) -> models.QuerySet[DeadLetteredPayment]:
        return super().get_queryset().filter(status=Status.DEAD_LETTERED)


class DeadLetteredPayment(Payment):
    """Payments the engine gave up on, for the operations admin (``payments/operations/admin.py``)."""

    objects = DeadLetteredPaymentManager()  # type: ignore[misc]

    class Meta:
        proxy = True
        verbose_name = "dead-lettered payment"
        permissions = [
            ("operate_deadletteredpayment", "Can re-drive and resolve dead-lettered payments"),
        ]


class DeadLetter(models.Model):
    """A message RabbitMQ dead-lettered (rejected, or over its delivery limit), recorded by ``drain_dead_letters``.

    Tasks carry only ids, and nothing else of the body is kept: no personal data here.
    The payments a dead message named are not lost with it: their lease brings them back.
    """

    received_at = models.DateTimeField(default=timezone.now, db_index=True)
    # sha256 of the body and the death record: a message recorded twice (crash before the ack) is one row.
    fingerprint = models.CharField(max_length=64, unique=True)
    task_name = models.CharField(max_length=200, blank=True, default="")
    task_id = models.CharField(max_length=100, blank=True, default="")
    queue = models.CharField(max_length=100, blank=True, default="")
    reason = models.CharField(max_length=50, blank=True, default="")  # x-death: rejected, delivery_limit, expired
    death_count = models.PositiveIntegerField(default=0)
    payment_ids = models.JSONField(default=list, blank=True)
    body_bytes = models.PositiveIntegerField(default=0)
    detail = models.JSONField(default=dict, blank=True)  # content type, exchange, routing keys: no payload

    class Meta:
        ordering = ["-received_at", "-id"]

    def __str__(self) -> str:
        return f"dead letter {self.task_name or '?'} ({self.reason or '?'}) at {self.received_at:%Y-%m-%dT%H:%M:%SZ}"


class GatewayCircuit(models.Model):
    """The circuit breaker of one gateway, shared by every worker process (``payments/engine/circuit.py``)."""

    class State(models.TextChoices):
        CLOSED = "closed"
        OPEN = "open"
        HALF_OPEN = "half_open"

    name = models.CharField(max_length=50, primary_key=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.CLOSED)
    window_started_at = models.DateTimeField(default=timezone.now)
    window_calls = models.PositiveIntegerField(default=0)
    window_failures = models.PositiveIntegerField(default=0)
    opened_until = models.DateTimeField(null=True, blank=True)
    probe_started_at = models.DateTimeField(null=True, blank=True)
    changed_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.name}: {self.state}"
