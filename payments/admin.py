"""Staff's view of payments: read-only, masked, with the timeline and a cancel action.

Nothing here edits a payment directly: status changes go through
``services`` (the state machine), so the admin cannot bypass its guards.

Least privilege (roles in ``accounts/migrations/0002_staff_roles.py``):

* ``support`` (view + change payment): the masked payment, its timeline, the cancel action.
* ``operations`` (view payment): the same masked view, no action.
* ``auditor`` (view payment event, not payment): the timelines only (``PaymentEventAdmin``).

Personal data is masked for everyone, superusers included: the payee name and the
description show their first character and ``***``, metadata only its keys, the
account its last four, the payment-method token nothing. Support answers "did my
payment to X go out, when, and why not" with the status, amounts, dates, timeline,
failure code and gateway reference; the payer (the only one who needs the full
values) sees them through the API. What the admin never shows cannot leak through
a screen share, a screenshot in a ticket or a compromised staff session.

Search: by payment id, username, gateway reference, or the payee's *full* account
number (exact match on ``payee_account_hmac``; see ``get_search_results``).
``IdempotencyRecord`` is not in the admin at all: its stored responses repeat
personal data, and nobody needs to browse them.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from common.crypto import normalize_account, payee_account_hmac
from common.error_codes import ProblemError

from .models import Payment, PaymentEvent
from .services import payment_cancel_by_staff

MASK = "***"
# A search term taken for an account number (after removing spaces): 5-64 letters, digits, dashes,
# dots or slashes, with at least four digits. Usernames and words are not; ids are matched anyway.
_ACCOUNT_LIKE = re.compile(r"(?=(?:[^0-9]*[0-9]){4})[A-Z0-9./-]{5,64}")


def mask_text(value: str) -> str:
    """The first character and ``***`` (nothing for an empty value): enough to tell two payees apart."""
    value = value.strip()
    return f"{value[0]}{MASK}" if value else ""


def looks_like_account(term: str) -> bool:
    return bool(_ACCOUNT_LIKE.fullmatch(normalize_account(term)))


_PAYMENT_FIELDS = (
    "id",
    "owner",
    "status",
    "amount",
    "currency",
    "payee_name_masked",
    "payee_account_masked",
    "description_masked",
    "metadata_keys",
    "scheduled_for",
    "time_zone",
    "scheduled_local",
    "attempts",
    "next_attempt_at",
    "lease_expires_at",
    "gateway_reference",
    "failure_code",
    "failure_message",
    "created_at",
    "updated_at",
    "executed_at",
    "canceled_at",
)


class PaymentEventInline(admin.TabularInline[PaymentEvent, Payment]):
    model = PaymentEvent
    fields = readonly_fields = ("at", "from_status", "to_status", "reason", "actor", "attempt")
    ordering = ["at", "id"]
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Payment | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Payment | None = None) -> bool:
        return False


@admin.register(Payment)
class PaymentAdmin(admin.ModelAdmin[Payment]):
    list_display = [
        "id",
        "owner",
        "status",
        "amount",
        "currency",
        "payee_name_masked",
        "payee_account_masked",
        "scheduled_for",
        "attempts",
        "created_at",
    ]
    list_filter = ["status", "currency"]
    search_fields = ["=id", "owner__username", "=gateway_reference"]
    list_select_related = ["owner"]
    ordering = ["-created_at"]
    show_full_result_count = False  # COUNT(*) over every payment is slow; the paginator still works
    fields = readonly_fields = _PAYMENT_FIELDS
    inlines = [PaymentEventInline]
    actions = ["cancel"]

    @admin.display(description="amount", ordering="amount_minor")
    def amount(self, payment: Payment) -> str:
        return payment.amount_display

    @admin.display(description="payee account")
    def payee_account_masked(self, payment: Payment) -> str:
        return f"•••• {payment.payee_account_last4}"

    @admin.display(description="payee name")
    def payee_name_masked(self, payment: Payment) -> str:
        return mask_text(payment.payee_name)

    @admin.display(description="description")
    def description_masked(self, payment: Payment) -> str:
        return mask_text(payment.description)

    @admin.display(description="metadata (keys only)")
    def metadata_keys(self, payment: Payment) -> str:
        metadata = payment.metadata if isinstance(payment.metadata, dict) else {}
        return ", ".join(sorted(metadata))

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Payment], search_term: str
    ) -> tuple[QuerySet[Payment], bool]:
        """The usual search, plus: a term that looks like an account number finds the payments to
        exactly that account (any spacing or letter case), through its HMAC. Never a partial match:
        the account is stored only encrypted and as a keyed hash of the whole value."""
        results, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        term = search_term.strip()
        if term and looks_like_account(term):
            results = results | queryset.filter(payee_account_hmac=payee_account_hmac(term))
        return results, may_have_duplicates

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # payments are created through the API, with an idempotency key

    def has_delete_permission(self, request: HttpRequest, obj: Payment | None = None) -> bool:
        return False  # the ledger of what was scheduled is kept

    @admin.action(description="Cancel selected payments (only those not yet submitted)", permissions=["change"])
    def cancel(self, request: HttpRequest, queryset: QuerySet[Payment]) -> None:
        assert request.user.pk is not None
        canceled, refused = 0, 0
        for payment_id in queryset.order_by("pk").values_list("pk", flat=True):
            try:
                payment_cancel_by_staff(payment_id=payment_id, staff_user_id=int(request.user.pk))
                canceled += 1
            except ProblemError:
                refused += 1
        if canceled:
            messages.success(request, f"Canceled {canceled} payment(s).")
        if refused:
            messages.warning(request, f"{refused} payment(s) could not be canceled: gateway submission had begun.")


@admin.register(PaymentEvent)
class PaymentEventAdmin(admin.ModelAdmin[PaymentEvent]):
    """Payment timelines, read-only: for ``auditor`` (and support, beside the payment itself).

    An event holds status names, a reason code, the actor (``user:<id>``, ``staff:<id>``,
    ``engine``...) and codes in ``data``: never personal data.
    """

    list_display = ["payment_id", "at", "from_status", "to_status", "reason", "actor", "attempt"]
    list_filter = ["to_status", "reason"]
    search_fields = ["=actor"]  # and a payment id: see get_search_results
    fields = readonly_fields = ("payment_id", "at", "from_status", "to_status", "reason", "actor", "attempt", "data")
    # Newest first by primary key: uses the primary-key index; one payment's events (search by
    # its id) come from the timeline index.
    ordering = ["-id"]
    show_full_result_count = False

    @admin.display(description="payment", ordering="payment_id")
    def payment_id(self, event: PaymentEvent) -> Any:
        return event.payment_id

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[PaymentEvent], search_term: str
    ) -> tuple[QuerySet[PaymentEvent], bool]:
        """A payment id lists that payment's timeline (from the timeline index); anything else is an actor."""
        try:
            payment_id = uuid.UUID(search_term.strip())
        except ValueError:
            return super().get_search_results(request, queryset, search_term)
        return queryset.filter(payment_id=payment_id), False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: PaymentEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: PaymentEvent | None = None) -> bool:
        return False
