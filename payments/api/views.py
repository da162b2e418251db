"""The end-user API (``/api/v1/``): thin views over serializers, services and selectors.

Authentication, throttling and error rendering come from the REST framework
settings (``config.problems`` turns every error into problem+json).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.http import HttpResponse
from django.urls import reverse
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import User
from common import actors
from common.error_codes import ErrorCode, ProblemError
from config.problems import PROBLEM_CONTENT_TYPE
from payments import selectors, services
from payments.selectors import Cursor
from payments.statuses import PublicStatus

from . import contract
from .idempotency import (
    IDEMPOTENCY_HEADER,
    REPLAYED_HEADER,
    WorkResult,
    idempotency_key_from,
    idempotent_execute,
    request_fingerprint,
)
from .pagination import encode_cursor
from .serializers import (
    PaymentCreateSerializer,
    PaymentEventListSerializer,
    PaymentListSerializer,
    PaymentSerializer,
    ProblemSerializer,
    event_representation,
    parse_json_object,
    parse_list_query,
    payment_representation,
    reject_card_data,
    validate_payment_create,
)

# --- OpenAPI description -------------------------------------------------------


class BearerTokenScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    target_class = "accounts.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API token from `manage.py issue_token`: `Authorization: Bearer spt_...`.",
        }


_PROBLEM_DESCRIPTIONS = {
    400: "`malformed_request`, `idempotency_key_required`, `idempotency_key_invalid`.",
    401: "`not_authenticated`: missing, unknown, expired or revoked token.",
    404: "`not_found`: no such payment for this user (another user's payment looks the same).",
    409: "`idempotency_key_in_use` (create) or `payment_not_cancelable` (cancel).",
    413: "`request_too_large`.",
    415: "`unsupported_media_type`: send `Content-Type: application/json`.",
    422: "Validation failed; `code` is the first problem's code and `errors` lists them all.",
    429: "`rate_limited`; see the `Retry-After` header.",
}


def _problems(*statuses: int, **descriptions: str) -> dict[Any, OpenApiResponse]:
    return {
        (status, PROBLEM_CONTENT_TYPE): OpenApiResponse(
            ProblemSerializer, description=descriptions.get(f"s{status}", _PROBLEM_DESCRIPTIONS[status])
        )
        for status in statuses
    }


_PAYMENT_ID = OpenApiParameter("payment_id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="The payment's id.")
_REQUEST_ID_DESCRIPTION = "Correlation id (up to 128 of `A-Za-z0-9._:-`); echoed in the response, or generated."
_REQUEST_ID_IN = OpenApiParameter(
    "X-Request-ID", OpenApiTypes.STR, OpenApiParameter.HEADER, description=_REQUEST_ID_DESCRIPTION
)
_REQUEST_ID_OUT = OpenApiParameter(
    "X-Request-ID", OpenApiTypes.STR, OpenApiParameter.HEADER, description=_REQUEST_ID_DESCRIPTION, response=True
)
_RETRY_AFTER = OpenApiParameter(
    "Retry-After", OpenApiTypes.INT, OpenApiParameter.HEADER, description="Seconds to wait.", response=[429, 409]
)
_RETRY_AFTER_429 = OpenApiParameter(
    "Retry-After", OpenApiTypes.INT, OpenApiParameter.HEADER, description="Seconds to wait.", response=[429]
)
_IDEMPOTENCY_KEY = OpenApiParameter(
    IDEMPOTENCY_HEADER,
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    required=True,
    pattern=f"^{contract.IDEMPOTENCY_KEY_REGEX}$",  # what the key is checked against (found missing by fuzzing)
    description=(
        "1-255 printable ASCII characters, unique per payment (a UUID is ideal); send the same key when retrying. "
        "Keys are scoped to your user and kept for at least 24 hours. The same key with the same body replays the "
        "original response; with a different body it is 422 `idempotency_key_reused`; while the first request is "
        "still running it is 409 `idempotency_key_in_use`."
    ),
)
_CREATE_RESPONSE_HEADERS = [
    OpenApiParameter(
        "Location", OpenApiTypes.URI, OpenApiParameter.HEADER, description="The new payment's URL.", response=[201]
    ),
    OpenApiParameter(
        REPLAYED_HEADER,
        OpenApiTypes.STR,
        OpenApiParameter.HEADER,
        enum=["true"],
        description="Present (`true`) when this is the stored response of an earlier request with the same key.",
        response=[201],
    ),
]
_LIST_PARAMETERS = [
    OpenApiParameter(
        "status",
        OpenApiTypes.STR,
        OpenApiParameter.QUERY,
        description="Public status, or several separated by commas: " + ", ".join(PublicStatus.values) + ".",
    ),
    OpenApiParameter(
        "scheduled_after",
        OpenApiTypes.DATETIME,
        OpenApiParameter.QUERY,
        description="Only payments with scheduled_for at or after this instant (RFC 3339 with Z or offset).",
    ),
    OpenApiParameter(
        "scheduled_before",
        OpenApiTypes.DATETIME,
        OpenApiParameter.QUERY,
        description="Only payments with scheduled_for strictly before this instant.",
    ),
    OpenApiParameter(
        "limit",
        {"type": "integer", "minimum": 1},  # 0 or less is 422 invalid_filter
        OpenApiParameter.QUERY,
        description=f"Page size, default {contract.DEFAULT_LIMIT}; larger values are reduced to {contract.MAX_LIMIT}.",
    ),
    OpenApiParameter(
        "cursor", OpenApiTypes.STR, OpenApiParameter.QUERY, description="Opaque; taken from a previous page's `next`."
    ),
]
_CREATE_EXAMPLE = OpenApiExample(
    "Rent in New York wall time",
    request_only=True,
    value={
        "amount": "125.50",
        "currency": "EUR",
        "payment_method": "pm_card_visa",
        "payee": {"name": "ACME Utilities", "account": "DE21370400440532014321"},
        "description": "March rent",
        "scheduled_for": "2027-03-14T02:30:00",
        "time_zone": "America/New_York",
        "on_nonexistent_time": "shift_forward",
        "metadata": {"invoice": "2027-03"},
    },
)

# --- Views -------------------------------------------------------------------------


def _owner(request: Request) -> User:
    user = request.user
    if not isinstance(user, User):  # the permission class has already refused anonymous requests
        raise ProblemError(ErrorCode.NOT_AUTHENTICATED, 401, "A valid bearer token is required.")
    return user


def _actor(user: User) -> str:
    return actors.user(user.pk)


class PaymentCollectionView(APIView):
    @extend_schema(
        operation_id="payments_list",
        summary="List your payments",
        description="Ordered by scheduled_for, then id; cursor-paginated (follow `next` until it is null).",
        parameters=[*_LIST_PARAMETERS, _REQUEST_ID_IN, _REQUEST_ID_OUT, _RETRY_AFTER_429],
        responses={200: PaymentListSerializer, **_problems(401, 422, 429)},
        tags=["payments"],
    )
    def get(self, request: Request) -> Response:
        owner = _owner(request)
        query = parse_list_query(request.query_params)
        page = selectors.payment_list_for_owner(
            owner=owner,
            statuses=query.statuses,
            scheduled_after=query.scheduled_after,
            scheduled_before=query.scheduled_before,
            after=query.cursor,
            limit=query.limit,
        )
        return Response(
            {
                "results": [payment_representation(payment) for payment in page.results],
                "next": _next_url(request, page.next_cursor),
            }
        )

    @extend_schema(
        operation_id="payments_create",
        summary="Schedule a payment",
        request=PaymentCreateSerializer,
        parameters=[_IDEMPOTENCY_KEY, _REQUEST_ID_IN, _REQUEST_ID_OUT, _RETRY_AFTER, *_CREATE_RESPONSE_HEADERS],
        examples=[_CREATE_EXAMPLE],
        responses={
            201: OpenApiResponse(PaymentSerializer, description="Scheduled (or the replay of an earlier success)."),
            **_problems(
                400,
                401,
                409,
                413,
                415,
                422,
                429,
                s409="`idempotency_key_in_use`: retry shortly.",
                s422=(
                    "Validation failed (`code` is the first problem's code, `errors` lists them all); or a per-user "
                    "limit: `pending_payments_limit_exceeded` (too many scheduled payments at once), "
                    "`daily_amount_limit_exceeded` (the total scheduled for that UTC day in that currency)."
                ),
            ),
        },
        tags=["payments"],
    )
    def post(self, request: Request) -> HttpResponse:
        owner = _owner(request)
        key = idempotency_key_from(request)
        body = parse_json_object(request)
        reject_card_data(body)  # before the body is fingerprinted, stored or logged anywhere
        fingerprint = request_fingerprint(request.method or "POST", request.path, body)

        def work(now: datetime) -> WorkResult:
            draft = validate_payment_create(body, now=now)
            payment = services.payment_create(owner=owner, data=draft, actor=_actor(owner), now=now)
            location = request.build_absolute_uri(reverse("payment-detail", args=[payment.pk]))
            return WorkResult(201, payment_representation(payment), {"Location": location}, payment)

        return idempotent_execute(user=owner, key=key, fingerprint=fingerprint, work=work).as_http_response()


def _next_url(request: Request, cursor: Cursor | None) -> str | None:
    if cursor is None:
        return None
    params = request.query_params.copy()
    params["cursor"] = encode_cursor(cursor)
    return request.build_absolute_uri(f"{request.path}?{params.urlencode()}")


class PaymentDetailView(APIView):
    @extend_schema(
        operation_id="payments_retrieve",
        summary="Get a payment",
        parameters=[_PAYMENT_ID, _REQUEST_ID_IN, _REQUEST_ID_OUT, _RETRY_AFTER_429],
        responses={200: PaymentSerializer, **_problems(401, 404, 429)},
        tags=["payments"],
    )
    def get(self, request: Request, payment_id: str) -> Response:
        payment = selectors.payment_get_for_owner(owner=_owner(request), payment_id=payment_id)
        return Response(payment_representation(payment))


class PaymentCancelView(APIView):
    @extend_schema(
        operation_id="payments_cancel",
        summary="Cancel a scheduled payment",
        description=(
            "Succeeds while no gateway submission has begun. Canceling a canceled payment answers 200 with the same "
            "body. No body and no Idempotency-Key are needed (an Idempotency-Key is accepted and ignored)."
        ),
        request=None,
        parameters=[_PAYMENT_ID, _REQUEST_ID_IN, _REQUEST_ID_OUT, _RETRY_AFTER_429],
        responses={
            200: PaymentSerializer,
            **_problems(401, 404, 409, 429, s409="`payment_not_cancelable`: processing, succeeded or failed."),
        },
        tags=["payments"],
    )
    def post(self, request: Request, payment_id: str) -> Response:
        owner = _owner(request)
        payment = services.payment_cancel(
            payment_id=selectors.parse_payment_id(payment_id), actor=_actor(owner), owner_id=owner.pk
        )
        return Response(payment_representation(payment))


class PaymentEventsView(APIView):
    @extend_schema(
        operation_id="payments_events",
        summary="A payment's timeline",
        description=(
            "Every recorded state transition, oldest first. `from`/`to` are public statuses (`from` is null for "
            "creation); `internal` shows the engine-level transition behind each one, so a step such as "
            "scheduled→scheduled (queued for execution) or processing→processing (a retry) is visible too."
        ),
        parameters=[_PAYMENT_ID, _REQUEST_ID_IN, _REQUEST_ID_OUT, _RETRY_AFTER_429],
        responses={200: PaymentEventListSerializer, **_problems(401, 404, 429)},
        tags=["payments"],
    )
    def get(self, request: Request, payment_id: str) -> Response:
        events = selectors.payment_events_for_owner(owner=_owner(request), payment_id=payment_id)
        return Response({"results": [event_representation(event) for event in events]})
