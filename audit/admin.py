from __future__ import annotations

import io

from django.contrib import admin
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from common import actors

from .models import AuditEvent
from .services import audit_export, audit_record


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin[AuditEvent]):
    list_display = ["at", "actor", "action", "target_type", "target_id"]
    list_filter = ["action"]
    search_fields = ["actor", "target_id"]
    date_hierarchy = "at"
    actions = ["export_csv"]

    # The trail is append-only, also for superusers.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False

    @admin.action(description="Export selected events (CSV)", permissions=["view"])
    def export_csv(self, request: HttpRequest, queryset: QuerySet[AuditEvent]) -> HttpResponse:
        buffer = io.StringIO()
        with transaction.atomic():
            count = audit_export(events=queryset.order_by("at", "id"), stream=buffer, fmt="csv")
            # Who exported what is itself part of the trail.
            audit_record(
                actor=actors.staff(request.user.pk),
                action="audit.exported",
                target=request.user,  # type: ignore[arg-type]
                data={"count": count, "format": "csv"},
            )
        stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
        response = HttpResponse(buffer.getvalue(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="audit-events-{stamp}.csv"'
        return response
