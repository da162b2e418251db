"""The operations admin: dead-lettered payments (re-drive, resolve), dead messages, the gateway circuit.

Registered from ``PaymentsConfig.ready()``; kept apart from ``payments/admin.py`` (support's
view of payments). Actions call the services in ``payments/operations/services.py`` and
``payments/engine/circuit.py``; nothing here edits a row directly. They are gated on the
``payments.operate_deadletteredpayment`` permission (the ``operations`` group, migration
0004); viewing needs the models' ``view`` permissions. No payee or payment-method data is
shown. docs/operations.md is the runbook.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from common import actors
from payments.engine.circuit import circuit_reset
from payments.engine.retry_policy import redrive_kind
from payments.models import DeadLetter, DeadLetteredPayment, GatewayCircuit, Payment, PaymentEvent

from .services import OperationRefused, Resolution, dead_letter_redrive, dead_letter_resolve

OPERATE_PERMISSION = "payments.operate_deadletteredpayment"


def _actor(request: HttpRequest) -> str:
    return actors.staff(request.user.pk)


class OperatorActionForm(forms.Form):
    reason = forms.CharField(
        max_length=500, widget=forms.Textarea(attrs={"rows": 3}), help_text="Ticket, what you checked or fixed."
    )
    reference = forms.CharField(
        max_length=100, required=False, help_text="The gateway's charge id (required to resolve as succeeded)."
    )


class _NoAddOrChange:
    """Nothing here is added or edited through the admin's forms: operators act through the actions (services)."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class _ReadOnly(_NoAddOrChange):
    """Nor deleted: the rows are the record of what happened."""

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class DeadLetterEventInline(_NoAddOrChange, admin.TabularInline[PaymentEvent, DeadLetteredPayment]):
    model = PaymentEvent
    fk_name = "payment"
    fields = readonly_fields = ("at", "from_status", "to_status", "reason", "actor", "attempt", "data")
    ordering = ["at", "id"]
    extra = 0
    can_delete = False


@admin.register(DeadLetteredPayment)
class DeadLetteredPaymentAdmin(_ReadOnly, admin.ModelAdmin[DeadLetteredPayment]):
    list_display = [
        "id",
        "dead_letter_reason",
        "redrive",
        "attempts",
        "amount",
        "currency",
        "scheduled_for",
        "updated_at",
        "failure_code",
        "gateway_reference",
    ]
    list_filter = ["dead_letter_reason"]
    search_fields = ["=id", "=gateway_reference"]
    ordering = ["updated_at"]
    show_full_result_count = False
    fields = readonly_fields = (
        "id",
        "status",
        "dead_letter_reason",
        "redrive",
        "amount",
        "currency",
        "scheduled_for",
        "attempts",
        "idempotency_key",
        "reconcile_attempts",
        "redrive_attempt",
        "redriven_at",
        "gateway_reference",
        "failure_code",
        "failure_message",
        "created_at",
        "updated_at",
    )
    inlines = [DeadLetterEventInline]
    actions = ["redrive_selected", "resolve_failed", "resolve_succeeded"]

    @admin.display(description="amount", ordering="amount_minor")
    def amount(self, payment: Payment) -> str:
        return payment.amount_display

    @admin.display(description="re-drive by")
    def redrive(self, payment: Payment) -> str:
        return str(redrive_kind(payment.dead_letter_reason))

    @admin.display(description="idempotency key of the last attempt")
    def idempotency_key(self, payment: Payment) -> str:
        return payment.gateway_idempotency_key() if payment.attempts else "-"

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(OPERATE_PERMISSION)

    # --- actions: each asks for a reason (and, to resolve as succeeded, the gateway reference) ---------------

    def _confirm(
        self, request: HttpRequest, queryset: QuerySet[DeadLetteredPayment], action: str, title: str
    ) -> HttpResponse | None:
        form = OperatorActionForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            self._apply(request, queryset, action, form.cleaned_data["reason"], form.cleaned_data["reference"])
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.model._meta,
            "payments": list(queryset[:100]),
            "form": form,
            "action": action,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "needs_reference": action == "resolve_succeeded",
        }
        return TemplateResponse(request, "admin/payments/deadletteredpayment/operator_action.html", context)

    def _apply(
        self, request: HttpRequest, queryset: QuerySet[DeadLetteredPayment], action: str, reason: str, reference: str
    ) -> None:
        done: list[str] = []
        refused: list[str] = []
        for payment_id in queryset.order_by("pk").values_list("pk", flat=True):
            try:
                if action == "redrive_selected":
                    dead_letter_redrive(payment_id=payment_id, actor=_actor(request), reason=reason)
                else:
                    outcome = Resolution.SUCCEEDED if action == "resolve_succeeded" else Resolution.FAILED
                    dead_letter_resolve(
                        payment_id=payment_id,
                        actor=_actor(request),
                        outcome=outcome,
                        reason=reason,
                        reference=reference,
                    )
                done.append(str(payment_id))
            except OperationRefused as error:
                refused.append(f"{payment_id}: {error.message}")
        if done:
            messages.success(request, f"{len(done)} payment(s) done.")
        for line in refused:
            messages.error(request, line)

    @admin.action(description="Re-drive (retry) selected payments", permissions=["operate"])
    def redrive_selected(self, request: HttpRequest, queryset: QuerySet[DeadLetteredPayment]) -> HttpResponse | None:
        return self._confirm(request, queryset, "redrive_selected", "Re-drive dead-lettered payments")

    @admin.action(description="Resolve as failed (verified: nothing charged)", permissions=["operate"])
    def resolve_failed(self, request: HttpRequest, queryset: QuerySet[DeadLetteredPayment]) -> HttpResponse | None:
        return self._confirm(request, queryset, "resolve_failed", "Resolve as failed")

    @admin.action(description="Resolve as succeeded (verified with the gateway reference)", permissions=["operate"])
    def resolve_succeeded(self, request: HttpRequest, queryset: QuerySet[DeadLetteredPayment]) -> HttpResponse | None:
        if queryset.count() != 1:
            messages.error(request, "Resolve one payment at a time as succeeded: each needs its own charge reference.")
            return None
        return self._confirm(request, queryset, "resolve_succeeded", "Resolve as succeeded")


@admin.register(DeadLetter)
class DeadLetterAdmin(_ReadOnly, admin.ModelAdmin[DeadLetter]):
    list_display = ["received_at", "task_name", "reason", "queue", "death_count", "task_id", "payment_count"]
    list_filter = ["reason", "task_name", "queue"]
    search_fields = ["=task_id"]
    fields = readonly_fields = (
        "received_at",
        "task_name",
        "task_id",
        "queue",
        "reason",
        "death_count",
        "payment_ids",
        "body_bytes",
        "detail",
        "fingerprint",
    )

    @admin.display(description="payments")
    def payment_count(self, dead_letter: DeadLetter) -> int:
        return len(dead_letter.payment_ids)


@admin.register(GatewayCircuit)
class GatewayCircuitAdmin(_ReadOnly, admin.ModelAdmin[GatewayCircuit]):
    list_display = [
        "name",
        "state",
        "opened_until",
        "window_calls",
        "window_failures",
        "window_started_at",
        "changed_at",
    ]
    fields = readonly_fields = (
        "name",
        "state",
        "opened_until",
        "probe_started_at",
        "window_calls",
        "window_failures",
        "window_started_at",
        "changed_at",
    )
    actions = ["close_circuit"]

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(OPERATE_PERMISSION)

    @admin.action(description="Close the circuit (the gateway is known to be back)", permissions=["operate"])
    def close_circuit(self, request: HttpRequest, queryset: QuerySet[GatewayCircuit]) -> None:
        for name in queryset.values_list("name", flat=True):
            circuit_reset(name, actor=_actor(request))
        messages.success(request, "Closed.")
