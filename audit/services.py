from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from typing import Any, Protocol

from django.db import models

from .models import AuditEvent


class _Writable(Protocol):
    def write(self, text: str, /) -> Any: ...


EXPORT_FIELDS = ("id", "at", "actor", "action", "target_type", "target_id", "data")


def audit_record(*, actor: str, action: str, target: models.Model, data: dict[str, Any] | None = None) -> AuditEvent:
    """Append an audit event; call it inside the transaction of the change it records."""
    return AuditEvent.objects.create(
        actor=actor,
        action=action,
        target_type=target._meta.label_lower,
        target_id=str(target.pk),
        data=data or {},
    )


def _export_row(event: AuditEvent) -> dict[str, str]:
    return {
        "id": str(event.pk),
        "at": event.at.isoformat().replace("+00:00", "Z"),
        "actor": event.actor,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "data": json.dumps(event.data, sort_keys=True, separators=(",", ":")),
    }


def audit_export(*, events: Iterable[AuditEvent], stream: _Writable, fmt: str = "csv") -> int:
    """Write events oldest first as CSV or JSON lines; returns how many were written.

    The rows hold ids and codes only (``audit_record``'s callers never pass personal data),
    so an export can leave the system for an auditor as it is.
    """
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(stream, fieldnames=EXPORT_FIELDS)
        writer.writeheader()
        for event in events:
            writer.writerow(_export_row(event))
            count += 1
    elif fmt == "jsonl":
        for event in events:
            row: dict[str, Any] = _export_row(event)
            row["data"] = event.data
            stream.write(json.dumps(row, sort_keys=True) + "\n")
            count += 1
    else:
        raise ValueError(f"unknown export format {fmt!r}")
    return count
