from __future__ import annotations

from django.db import models
from django.utils import timezone


class AuditEvent(models.Model):
    """An append-only record of who did what to which object, and why.

    Payment state transitions live in ``payments.PaymentEvent``; this table holds
    actions by people and operators (tokens issued, staff cancels, re-drives).
    ``data`` never holds personal data in clear: callers pass ids and codes.
    """

    at = models.DateTimeField(default=timezone.now, db_index=True, editable=False)
    actor = models.CharField(max_length=100)
    action = models.CharField(max_length=100, db_index=True)
    target_type = models.CharField(max_length=100)
    target_id = models.CharField(max_length=64)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["target_type", "target_id", "at"], name="audit_target_idx")]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%dT%H:%M:%SZ} {self.actor} {self.action} {self.target_type}:{self.target_id}"
