"""The API's wire format: request parsing and validation, and the JSON it answers.

Validation of ``POST /api/v1/payments`` is written out by hand rather than with
DRF fields, because the contract is strict where DRF is lenient: an amount must
be a *string* (DRF's ``DecimalField`` would take the float ``125.5``), every
problem has the contract's own ``code``, and all of them are reported at once.
The DRF serializers below render responses and describe requests to
drf-spectacular; ``PaymentCreateSerializer`` documents what
``validate_payment_create`` enforces (a test keeps their field lists equal).

Messages never quote a submitted value: it may be personal data or a card number.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

from django.conf import settings
from django.http import QueryDict
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request

from common.card_data import find_card_data, mask_card_numbers
from common.error_codes import ErrorCode, FieldError, ProblemError
from payments.currencies import CURRENCY_EXPONENTS, to_minor_units
from payments.models import Payment, PaymentEvent
from payments.selectors import Cursor
from payments.services import PaymentDraft
from payments.statuses import INTERNAL_STATUSES, PublicStatus, public_status
from payments.time_semantics import (
    AMBIGUOUS_POLICIES,
    NONEXISTENT_POLICIES,
    check_window,
    format_instant,
    format_local,
    resolve_schedule,
)

from . import contract
from .pagination import decode_cursor, parse_limit

# --- Responses ---------------------------------------------------------------


@extend_schema_field(OpenApiTypes.DATETIME)
class InstantField(serializers.Field):  # type: ignore[type-arg]
    """An instant as RFC 3339 UTC with ``Z``, fractional seconds only when not zero."""

    def to_representation(self, value: datetime) -> str:
        return format_instant(value)


class PayeeSerializer(serializers.Serializer):  # type: ignore[type-arg]
    name = serializers.CharField(source="payee_name")
    account_last4 = serializers.CharField(
        source="payee_account_last4", help_text="The last four letters or digits of the account; never more."
    )


class FailureSerializer(serializers.Serializer):  # type: ignore[type-arg]
    code = serializers.CharField()
    message = serializers.CharField()


class PaymentSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """The contract's payment object."""

    id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=PublicStatus.choices, source="public_status")
    amount = serializers.CharField(
        source="amount_display", help_text="A decimal string with the currency's decimals, never a JSON number."
    )
    currency = serializers.CharField(help_text="ISO 4217 code.")
    payee = PayeeSerializer(source="*")
    description = serializers.CharField()
    scheduled_for = InstantField(help_text="The due instant, UTC.")
    time_zone = serializers.CharField(help_text='The IANA zone the payment was scheduled in (or "UTC").')
    scheduled_local = serializers.SerializerMethodField(help_text="scheduled_for as wall time in time_zone.")
    created_at = InstantField()
    updated_at = InstantField()
    executed_at = InstantField(allow_null=True)
    canceled_at = InstantField(allow_null=True)
    attempts = serializers.IntegerField(help_text="Gateway submission attempts begun so far.")
    failure = serializers.SerializerMethodField()
    gateway_reference = serializers.SerializerMethodField(help_text="The gateway's charge id once submitted.")
    metadata = serializers.DictField(child=serializers.CharField())

    def get_scheduled_local(self, payment: Payment) -> str:
        return _scheduled_local(payment)

    @extend_schema_field(FailureSerializer(allow_null=True))
    def get_failure(self, payment: Payment) -> dict[str, str] | None:
        return _failure(payment)

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_gateway_reference(self, payment: Payment) -> str | None:
        return payment.gateway_reference or None


def _scheduled_local(payment: Payment) -> str:
    try:
        return format_local(payment.scheduled_for, payment.time_zone)
    except ValueError:  # a zone this tzdata no longer knows: the wall time stored at creation
        return payment.scheduled_local


def _failure(payment: Payment) -> dict[str, str] | None:
    if payment.public_status != PublicStatus.FAILED:
        return None
    return {"code": payment.failure_code or "unknown", "message": payment.failure_message}


def _instant_or_none(value: datetime | None) -> str | None:
    return None if value is None else format_instant(value)


def payment_representation(payment: Payment) -> dict[str, Any]:
    """The contract's payment object, exactly as ``PaymentSerializer`` renders it (a test compares them).

    Built directly because a DRF serializer instantiates and deep-copies its fields for
    every object: ~0.2 ms each, a sixth of a create's CPU and most of a list page's.
    ``PaymentSerializer`` remains the description in the OpenAPI schema.
    """
    return {
        "id": str(payment.pk),
        "status": str(payment.public_status),
        "amount": payment.amount_display,
        "currency": payment.currency,
        "payee": {"name": payment.payee_name, "account_last4": payment.payee_account_last4},
        "description": payment.description,
        "scheduled_for": format_instant(payment.scheduled_for),
        "time_zone": payment.time_zone,
        "scheduled_local": _scheduled_local(payment),
        "created_at": format_instant(payment.created_at),
        "updated_at": format_instant(payment.updated_at),
        "executed_at": _instant_or_none(payment.executed_at),
        "canceled_at": _instant_or_none(payment.canceled_at),
        "attempts": payment.attempts,
        "failure": _failure(payment),
        "gateway_reference": payment.gateway_reference or None,
        "metadata": {str(key): str(value) for key, value in payment.metadata.items()},
    }


class PaymentListSerializer(serializers.Serializer):  # type: ignore[type-arg]
    results = PaymentSerializer(many=True)
    next = serializers.URLField(allow_null=True, help_text="The next page's URL, or null on the last page.")


_PUBLIC = ", ".join(PublicStatus.values)

# `from` is a Python keyword, so these two are built with type() to keep the fields in order.
InternalTransitionSerializer = type(
    "InternalTransitionSerializer",
    (serializers.Serializer,),
    {
        "from": serializers.CharField(allow_null=True, help_text="Engine-level status before (null at creation)."),
        "to": serializers.CharField(help_text="Engine-level status after; informational, values may be added."),
    },
)

PaymentEventSerializer = type(
    "PaymentEventSerializer",
    (serializers.Serializer,),
    {
        "__doc__": "One state transition of a payment.",
        "at": InstantField(),
        # Plain strings in the schema: one enum under three names would be reported as a conflict.
        "from": serializers.CharField(
            allow_null=True, help_text=f"Public status before (null at creation): {_PUBLIC}."
        ),
        "to": serializers.CharField(help_text=f"Public status after: {_PUBLIC}."),
        "reason": serializers.CharField(),
        "attempt": serializers.IntegerField(help_text="The gateway attempt it belongs to (0 before any)."),
        "internal": InternalTransitionSerializer(help_text="The engine-level transition behind the public one."),
    },
)


def event_representation(event: PaymentEvent) -> dict[str, Any]:
    """Public ``from``/``to``; every recorded transition is shown, with the internal one beside it."""
    return {
        "at": format_instant(event.at),
        "from": public_status(event.from_status) if event.from_status else None,
        "to": public_status(event.to_status),
        "reason": event.reason,
        "attempt": event.attempt,
        "internal": {"from": event.from_status or None, "to": event.to_status},
    }


class PaymentEventListSerializer(serializers.Serializer):  # type: ignore[type-arg]
    results = PaymentEventSerializer(many=True)


class FieldErrorSerializer(serializers.Serializer):  # type: ignore[type-arg]
    field = serializers.CharField(help_text='The offending field, dotted for nested ones ("payee.name").')
    code = serializers.CharField()
    message = serializers.CharField()


class ProblemSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """An RFC 9457 problem document (``application/problem+json``)."""

    type = serializers.URLField()
    title = serializers.CharField()
    status = serializers.IntegerField()
    detail = serializers.CharField()
    code = serializers.CharField(help_text="Stable machine-readable error code; see the API documentation.")
    # DRF's metaclass moves declared fields off the class, so Serializer.errors is not shadowed.
    errors = FieldErrorSerializer(many=True, required=False)  # type: ignore[assignment]
    request_id = serializers.CharField(help_text="Echoes X-Request-ID; quote it when asking for support.")


# --- Requests: documentation -------------------------------------------------


class PayeeCreateSerializer(serializers.Serializer):  # type: ignore[type-arg]
    name = serializers.CharField(min_length=1, max_length=contract.MAX_PAYEE_NAME)
    account = serializers.CharField(
        min_length=1,
        max_length=contract.MAX_PAYEE_ACCOUNT,
        help_text="Account identifier (e.g. an IBAN); only its last 4 are ever shown.",
    )


class PaymentCreateSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """Documents the body of ``POST /api/v1/payments``; unknown fields are rejected (``unknown_field``)."""

    amount = serializers.CharField(
        help_text='Decimal string > 0 with at most the currency\'s decimals (JPY 0, EUR 2, BHD 3), e.g. "125.50". '
        "JSON numbers are rejected."
    )
    currency = serializers.ChoiceField(choices=sorted(CURRENCY_EXPONENTS))
    payment_method = serializers.RegexField(
        f"^{contract.PAYMENT_METHOD_REGEX}$", help_text="A gateway payment-method token; never card data."
    )
    payee = PayeeCreateSerializer()
    description = serializers.CharField(
        required=False, allow_blank=True, allow_null=True, max_length=contract.MAX_DESCRIPTION
    )
    scheduled_for = serializers.CharField(
        help_text="ISO 8601 / RFC 3339. With Z or an offset: an instant. Without: wall time in time_zone."
    )
    time_zone = serializers.CharField(
        required=False, allow_null=True, help_text="IANA zone name; required when scheduled_for has no offset."
    )
    # allow_null: null means "left out" for every optional field (found missing here by fuzzing).
    on_nonexistent_time = serializers.ChoiceField(choices=list(NONEXISTENT_POLICIES), default="reject", allow_null=True)
    on_ambiguous_time = serializers.ChoiceField(choices=list(AMBIGUOUS_POLICIES), default="earlier", allow_null=True)
    metadata = serializers.DictField(
        # allow_blank: "" is a valid value (the contract limits only the length; found by fuzzing).
        child=serializers.CharField(max_length=contract.MAX_METADATA_VALUE, allow_blank=True),
        required=False,
        allow_null=True,
        help_text=f"Flat object of at most {contract.MAX_METADATA_KEYS} string values (keys up to "
        f"{contract.MAX_METADATA_KEY} characters, values up to {contract.MAX_METADATA_VALUE}).",
    )


# --- Requests: parsing and validation ------------------------------------------

CREATE_FIELDS = (
    "amount",
    "currency",
    "payment_method",
    "payee",
    "description",
    "scheduled_for",
    "time_zone",
    "on_nonexistent_time",
    "on_ambiguous_time",
    "metadata",
)
PAYEE_FIELDS = ("name", "account")

_AMOUNT = re.compile(r"(?P<whole>[0-9]{1,20})(?:\.(?P<fraction>[0-9]{1,20}))?")
_MAX_BODY_DEPTH = 16
_LINE_BREAKS = frozenset("\t\n\r")


def parse_json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object: 413 too large, 415 not JSON, 400 empty or malformed."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
        raise ProblemError(
            ErrorCode.REQUEST_TOO_LARGE,
            413,
            f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes.",
        )
    if length == 0:
        raise ProblemError(ErrorCode.MALFORMED_REQUEST, 400, "The request body is empty; send a JSON object.")
    if not request.content_type:
        raise ProblemError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, 415, "Send the body as application/json.")
    try:
        data = request.data  # DRF: 415 for another media type, 400 malformed_request for bad JSON
    except RecursionError:
        data = None
    if not isinstance(data, dict):
        raise ProblemError(ErrorCode.MALFORMED_REQUEST, 400, "The request body must be a JSON object.")
    if _depth(data) > _MAX_BODY_DEPTH:
        raise ProblemError(ErrorCode.MALFORMED_REQUEST, 400, "The request body is nested too deeply.")
    return data


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        current, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > _MAX_BODY_DEPTH:
            break
        if isinstance(current, dict):
            stack.extend((child, depth + 1) for child in current.values())
        elif isinstance(current, list):
            stack.extend((child, depth + 1) for child in current)
    return deepest


def reject_card_data(body: Any) -> None:
    """422 ``card_data_forbidden`` naming (never quoting) every field that holds a card number.

    Runs before anything is stored, fingerprinted or logged: such a request leaves no trace.
    """
    paths = find_card_data(body)
    if paths:
        message = "This field looks like it contains a card number; card data may not be sent to this API."
        raise ProblemError(
            ErrorCode.CARD_DATA_FORBIDDEN,
            422,
            "Card numbers may not be sent to this API: pass a payment_method token from the gateway instead.",
            errors=[FieldError(path or "body", ErrorCode.CARD_DATA_FORBIDDEN, message) for path in paths],
        )


def _field_name(name: object) -> str:
    """A client-supplied field name, safe to echo in an error."""
    return mask_card_numbers(str(name))[:100]


def _text_problem(value: str, *, allow_line_breaks: bool = False) -> str | None:
    """Why a string cannot be stored as text (control characters, unpaired surrogates), or None."""
    for char in value:
        if unicodedata.category(char) in ("Cc", "Cs") and not (allow_line_breaks and char in _LINE_BREAKS):
            return "must not contain control characters"
    return None


class _Collector:
    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def add(self, field_name: str, code: ErrorCode, message: str) -> None:
        self.errors.append(FieldError(field_name, code, message))

    def add_problem(self, problem: ProblemError) -> None:
        self.errors.extend(problem.errors or [FieldError("body", problem.code, problem.detail)])

    def raise_if_any(self) -> None:
        if not self.errors:
            return
        first = self.errors[0]
        detail = first.message
        if len(self.errors) > 1:
            detail = f"{first.message} ({len(self.errors) - 1} more problem(s) in `errors`.)"
        raise ProblemError(code=ErrorCode(first.code), status=422, detail=detail, errors=list(self.errors))


def _validate_currency(value: object, out: _Collector) -> str | None:
    if value is None:
        out.add("currency", ErrorCode.UNSUPPORTED_CURRENCY, "currency is required.")
    elif not isinstance(value, str) or value not in CURRENCY_EXPONENTS:
        out.add(
            "currency",
            ErrorCode.UNSUPPORTED_CURRENCY,
            f"currency must be one of the supported ISO 4217 codes: {', '.join(sorted(CURRENCY_EXPONENTS))}.",
        )
    else:
        return value
    return None


def _validate_amount(value: object, currency: str | None, out: _Collector) -> int | None:
    code = ErrorCode.INVALID_AMOUNT
    if value is None:
        out.add("amount", code, "amount is required.")
        return None
    if not isinstance(value, str):
        out.add("amount", code, 'amount must be a decimal string such as "125.50", not a JSON number.')
        return None
    match = _AMOUNT.fullmatch(value)
    if match is None:
        out.add("amount", code, 'amount must be a decimal string of digits with an optional point, e.g. "125.50".')
        return None
    amount = Decimal(value)
    if amount <= 0:
        out.add("amount", code, "amount must be greater than zero.")
        return None
    maximum = Decimal(settings.PAYMENTS_MAX_AMOUNT)
    if amount > maximum:
        out.add("amount", code, f"amount must be at most {maximum}.")
        return None
    if currency is None:
        return None  # the decimals cannot be judged; the currency's own error is reported
    decimals = len(match["fraction"] or "")
    exponent = CURRENCY_EXPONENTS[currency]
    if decimals > exponent:
        allowed = "no decimal places" if exponent == 0 else f"at most {exponent} decimal places"
        out.add("amount", code, f"{currency} amounts have {allowed}.")
        return None
    return to_minor_units(amount, currency)


def _validate_payment_method(value: object, out: _Collector) -> str | None:
    if value is None:
        out.add("payment_method", ErrorCode.INVALID_PAYMENT_METHOD, "payment_method is required.")
    elif not isinstance(value, str) or not contract.PAYMENT_METHOD_PATTERN.fullmatch(value):
        out.add(
            "payment_method",
            ErrorCode.INVALID_PAYMENT_METHOD,
            'payment_method must be a gateway payment-method token such as "pm_card_visa".',
        )
    else:
        return value
    return None


def _validate_payee(value: object, out: _Collector) -> tuple[str, str] | None:
    code = ErrorCode.INVALID_PAYEE
    if value is None:
        out.add("payee", code, 'payee is required: {"name": ..., "account": ...}.')
        return None
    if not isinstance(value, dict):
        out.add("payee", code, 'payee must be an object: {"name": ..., "account": ...}.')
        return None
    before = len(out.errors)
    for name in value:
        if name not in PAYEE_FIELDS:
            out.add(f"payee.{_field_name(name)}", code, "Unknown payee field; payee has only name and account.")
    limits = {"name": contract.MAX_PAYEE_NAME, "account": contract.MAX_PAYEE_ACCOUNT}
    texts: dict[str, str] = {}
    for part, limit in limits.items():
        text = value.get(part)
        where = f"payee.{part}"
        if text is None:
            out.add(where, code, f"{where} is required.")
        elif not isinstance(text, str) or not text.strip() or len(text) > limit:
            out.add(where, code, f"{where} must be a non-blank string of at most {limit} characters.")
        elif problem := _text_problem(text):
            out.add(where, code, f"{where} {problem}.")
        else:
            texts[part] = text
    if len(out.errors) > before:
        return None
    return texts["name"], texts["account"]


def _validate_description(value: object, out: _Collector) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > contract.MAX_DESCRIPTION:
        out.add(
            "description",
            ErrorCode.INVALID_DESCRIPTION,
            f"description must be a string of at most {contract.MAX_DESCRIPTION} characters.",
        )
    elif problem := _text_problem(value, allow_line_breaks=True):
        out.add("description", ErrorCode.INVALID_DESCRIPTION, f"description {problem}.")
    return value if isinstance(value, str) else ""


def _validate_metadata(value: object, out: _Collector) -> dict[str, str]:
    code = ErrorCode.INVALID_METADATA
    if value is None:
        return {}
    if not isinstance(value, dict):
        out.add("metadata", code, "metadata must be a flat JSON object of string values.")
        return {}
    if len(value) > contract.MAX_METADATA_KEYS:
        out.add("metadata", code, f"metadata may have at most {contract.MAX_METADATA_KEYS} keys.")
        return {}
    result: dict[str, str] = {}
    for key, item in value.items():
        where = f"metadata.{_field_name(key)}"
        if not key or len(key) > contract.MAX_METADATA_KEY or _text_problem(key):
            out.add(where, code, f"metadata keys must be 1-{contract.MAX_METADATA_KEY} printable characters.")
        elif not isinstance(item, str) or len(item) > contract.MAX_METADATA_VALUE:
            out.add(
                where, code, f"metadata values must be strings of at most {contract.MAX_METADATA_VALUE} characters."
            )
        elif problem := _text_problem(item, allow_line_breaks=True):
            out.add(where, code, f"metadata values {problem}.")
        else:
            result[key] = item
    return result


def _validate_schedule(body: Mapping[str, Any], now: datetime, out: _Collector) -> tuple[datetime, str, str] | None:
    scheduled_for = body.get("scheduled_for")
    if scheduled_for is None:
        out.add("scheduled_for", ErrorCode.INVALID_SCHEDULED_FOR, "scheduled_for is required.")
        return None
    on_nonexistent = body.get("on_nonexistent_time")
    on_ambiguous = body.get("on_ambiguous_time")
    try:
        # resolve_schedule checks the types itself (a non-string is invalid_scheduled_for, and so on).
        resolved = resolve_schedule(
            cast(str, scheduled_for),
            cast("str | None", body.get("time_zone")),
            on_nonexistent_time=cast(str, "reject" if on_nonexistent is None else on_nonexistent),
            on_ambiguous_time=cast(str, "earlier" if on_ambiguous is None else on_ambiguous),
        )
        check_window(resolved.instant, now, settings.PAYMENTS_SCHEDULE_HORIZON)
    except ProblemError as problem:
        out.add_problem(problem)
        return None
    return resolved.instant, resolved.time_zone, format_local(resolved.instant, resolved.time_zone)


def validate_payment_create(body: Mapping[str, Any], *, now: datetime) -> PaymentDraft:
    """Every rule of the contract's body table; all problems at once, the first one's code on top.

    ``now`` is the database clock, against which ``scheduled_for`` must be in the
    future and within ``PAYMENTS_SCHEDULE_HORIZON``. JSON ``null`` for an optional
    field means the same as leaving it out.
    """
    out = _Collector()
    for name in body:
        if name not in CREATE_FIELDS:
            out.add(
                _field_name(name),
                ErrorCode.UNKNOWN_FIELD,
                "Unknown field; the body accepts only: " + ", ".join(CREATE_FIELDS) + ".",
            )
    # The amount's decimals depend on the currency, but the contract lists amount first.
    currency_errors = _Collector()
    currency = _validate_currency(body.get("currency"), currency_errors)
    amount_minor = _validate_amount(body.get("amount"), currency, out)
    out.errors.extend(currency_errors.errors)
    payment_method = _validate_payment_method(body.get("payment_method"), out)
    payee = _validate_payee(body.get("payee"), out)
    description = _validate_description(body.get("description"), out)
    schedule = _validate_schedule(body, now, out)
    metadata = _validate_metadata(body.get("metadata"), out)
    out.raise_if_any()
    if amount_minor is None or currency is None or payment_method is None or payee is None or schedule is None:
        raise RuntimeError("validation passed without a value")  # unreachable: each None comes with an error
    scheduled_for, time_zone, scheduled_local = schedule
    return PaymentDraft(
        amount_minor=amount_minor,
        currency=currency,
        payment_method=payment_method,
        payee_name=payee[0],
        payee_account=payee[1],
        description=description,
        metadata=metadata,
        scheduled_for=scheduled_for,
        time_zone=time_zone,
        scheduled_local=scheduled_local,
    )


# --- Listing query -------------------------------------------------------------

LIST_PARAMETERS = ("status", "scheduled_after", "scheduled_before", "limit", "cursor")


@dataclass(frozen=True)
class PaymentListQuery:
    statuses: list[str] | None  # internal statuses
    scheduled_after: datetime | None
    scheduled_before: datetime | None
    cursor: Cursor | None
    limit: int


def _parse_instant_filter(name: str, raw: str | None, out: _Collector) -> datetime | None:
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw) if len(raw) <= 64 else None
        if value is not None and value.tzinfo is not None:
            # In UTC: PostgreSQL refuses offsets beyond +-15:59 (Python takes up to 23:59), and an
            # instant at the edge of year 1 or 9999 may not exist in UTC at all (found by fuzzing: a 500).
            value = value.astimezone(UTC)
    except (ValueError, OverflowError):
        value = None
    if value is None or value.tzinfo is None:
        out.add(name, ErrorCode.INVALID_FILTER, f"{name} must be an RFC 3339 instant with Z or an offset.")
        return None
    return value


def parse_list_query(params: QueryDict) -> PaymentListQuery:
    """``GET /api/v1/payments`` query parameters; unknown ones are 422 ``invalid_filter``."""
    out = _Collector()
    for name in params:
        if name not in LIST_PARAMETERS:
            out.add(
                _field_name(name),
                ErrorCode.INVALID_FILTER,
                "Unknown query parameter; accepted: " + ", ".join(LIST_PARAMETERS) + ".",
            )
    statuses: list[str] | None = None
    requested = [part.strip() for raw in params.getlist("status") for part in raw.split(",") if part.strip()]
    if requested:
        if any(status not in INTERNAL_STATUSES for status in requested):
            out.add(
                "status",
                ErrorCode.INVALID_FILTER,
                "status must be one or more (comma-separated) of: " + ", ".join(PublicStatus.values) + ".",
            )
        else:
            statuses = sorted({internal for status in requested for internal in INTERNAL_STATUSES[status]})
    scheduled_after = _parse_instant_filter("scheduled_after", params.get("scheduled_after"), out)
    scheduled_before = _parse_instant_filter("scheduled_before", params.get("scheduled_before"), out)
    limit = 0
    try:
        limit = parse_limit(params.get("limit"))
    except ProblemError as problem:
        out.add_problem(problem)
    cursor: Cursor | None = None
    raw_cursor = params.get("cursor")
    if isinstance(raw_cursor, str) and raw_cursor:
        try:
            cursor = decode_cursor(raw_cursor)
        except ProblemError as problem:
            out.add_problem(problem)
    out.raise_if_any()
    return PaymentListQuery(
        statuses=statuses,
        scheduled_after=scheduled_after,
        scheduled_before=scheduled_before,
        cursor=cursor,
        limit=limit,
    )
