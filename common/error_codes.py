"""Every machine-readable error ``code`` of the public contract, in one place.

The strings are part of ``shared/spec/API.md``: clients branch on them, so a
value here never changes once released. ``ProblemError`` carries a code to the
API's problem+json renderer from any layer (services, validators, views).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class ErrorCode(enum.StrEnum):
    # Request shape and authentication
    MALFORMED_REQUEST = "malformed_request"
    VALIDATION_ERROR = "validation_error"
    NOT_AUTHENTICATED = "not_authenticated"
    PERMISSION_DENIED = "permission_denied"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    NOT_ACCEPTABLE = "not_acceptable"
    REQUEST_TOO_LARGE = "request_too_large"
    RATE_LIMITED = "rate_limited"
    INTERNAL_ERROR = "internal_error"
    SERVICE_UNAVAILABLE = "service_unavailable"

    # Idempotency
    IDEMPOTENCY_KEY_REQUIRED = "idempotency_key_required"
    IDEMPOTENCY_KEY_INVALID = "idempotency_key_invalid"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    IDEMPOTENCY_KEY_IN_USE = "idempotency_key_in_use"

    # Payment fields
    INVALID_AMOUNT = "invalid_amount"
    UNSUPPORTED_CURRENCY = "unsupported_currency"
    INVALID_PAYMENT_METHOD = "invalid_payment_method"
    INVALID_PAYEE = "invalid_payee"
    INVALID_DESCRIPTION = "invalid_description"
    INVALID_METADATA = "invalid_metadata"
    CARD_DATA_FORBIDDEN = "card_data_forbidden"
    UNKNOWN_FIELD = "unknown_field"

    # Time
    INVALID_SCHEDULED_FOR = "invalid_scheduled_for"
    INVALID_TIME_ZONE = "invalid_time_zone"
    TIME_ZONE_REQUIRED = "time_zone_required"
    NONEXISTENT_LOCAL_TIME = "nonexistent_local_time"
    AMBIGUOUS_LOCAL_TIME = "ambiguous_local_time"
    SCHEDULED_TIME_IN_PAST = "scheduled_time_in_past"
    SCHEDULED_TIME_TOO_FAR = "scheduled_time_too_far"
    INVALID_TIME_POLICY = "invalid_time_policy"

    # Listing
    INVALID_CURSOR = "invalid_cursor"
    INVALID_FILTER = "invalid_filter"

    # State
    PAYMENT_NOT_CANCELABLE = "payment_not_cancelable"

    # Per-user business limits (422: retrying the same request cannot succeed until the situation changes)
    PENDING_PAYMENTS_LIMIT_EXCEEDED = "pending_payments_limit_exceeded"
    DAILY_AMOUNT_LIMIT_EXCEEDED = "daily_amount_limit_exceeded"


@dataclass(frozen=True)
class FieldError:
    field: str
    code: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "code": self.code, "message": self.message}


@dataclass
class ProblemError(Exception):
    """An error the API answers as ``application/problem+json``.

    ``detail`` and ``errors`` are shown to the client: never put a submitted
    value (it may be personal data or a card number) into them.
    """

    code: ErrorCode
    status: int
    detail: str
    errors: list[FieldError] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(f"{self.code}: {self.detail}")

    @classmethod
    def invalid(cls, field_name: str, code: ErrorCode, message: str) -> ProblemError:
        """A 422 about one field, the field's code also being the problem's code."""
        return cls(code=code, status=422, detail=message, errors=[FieldError(field_name, code, message)])
