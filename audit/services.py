from __future__ import annotations

from typing import Any

from django.db import models

from .models import AuditEvent


def audit_record(*, actor: str, action: str, target: models.Model, data: dict[str, Any] | None = None) -> AuditEvent:
    """Append an audit event; call it inside the transaction of the change it records."""
    return AuditEvent.objects.create(
        actor=actor,
        action=action,
        target_type=target._meta.label_lower,
        target_id=str(target.pk),
        data=data or {},
    )
