"""Field types for personal and sensitive payment data.

Every personal value (payee name and account, description, metadata, the
payment-method token, stored idempotent responses) is declared with one of
these, so encryption at rest can be switched on here without touching the
models' users or the API.
"""

from __future__ import annotations

from django.db import models


class SensitiveTextField(models.TextField):  # type: ignore[type-arg]
    """Text that is personal or secret: never indexed, never logged."""


class SensitiveJSONField(models.JSONField):  # type: ignore[type-arg]
    """JSON that may contain personal data."""
