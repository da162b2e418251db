"""Support staff's view of payments: read-only, masked, with the timeline and a cancel action.

Nothing here edits a payment directly: status changes go through
``services`` (the state machine), so the admin cannot bypass its guards.
The payee account and the payment-method token are never shown.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from .error_codes import ProblemError
from .models import Payment, PaymentEvent
from .services import payment_cancel_by_staff

_PAYMENT_FIELDS = (
    "id",
    "owner",
    "status",
    "amount",
    "currency",
    "payee_name",
    "payee_account_masked",
    "description",
    "metadata",
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
    list_display = ["id", "owner", "status", "amount", "currency", "scheduled_for", "attempts", "created_at"]
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
