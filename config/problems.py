"""RFC 9457 problem+json for every error the API returns.

One renderer for all errors: DRF exceptions, our ``ProblemError`` and Django's
own 404/500 handlers all end here, so clients always see the same shape.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from common.error_codes import ErrorCode, FieldError, ProblemError

from .throttling import throttle_failed_authentication

logger = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://docs.scheduled-payments.example/errors/"

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def problem_body(problem: ProblemError, request_id: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + str(problem.code),
        "title": _TITLES.get(problem.status, "Error"),
        "status": problem.status,
        "detail": problem.detail,
        "code": str(problem.code),
    }
    if problem.errors:
        body["errors"] = [e.as_dict() for e in problem.errors]
    body.update(problem.extra)
    body["request_id"] = request_id
    return body


def problem_response(problem: ProblemError, request: Any = None) -> Response:
    request_id = getattr(request, "request_id", "") if request is not None else ""
    if request is not None:
        # DRF renders the response with the renderer the request negotiated; views that render
        # YAML or HTML (the schema, Swagger UI) would otherwise send a problem in their format.
        request.accepted_renderer = JSONRenderer()
        request.accepted_media_type = PROBLEM_CONTENT_TYPE
    response = Response(problem_body(problem, request_id), status=problem.status, content_type=PROBLEM_CONTENT_TYPE)
    for name, value in problem.headers.items():
        response[name] = value
    return response


def _validation_problem(exc: exceptions.ValidationError) -> ProblemError:
    """Flatten DRF's nested ``detail`` into the contract's ``errors`` list."""
    errors: list[FieldError] = []

    def walk(detail: Any, path: str) -> None:
        if isinstance(detail, dict):
            for key, value in detail.items():
                walk(value, f"{path}.{key}" if path and key != "non_field_errors" else (path or str(key)))
        elif isinstance(detail, list):
            for item in detail:
                walk(item, path)
        else:
            code = getattr(detail, "code", None) or ErrorCode.VALIDATION_ERROR
            errors.append(FieldError(path or "body", str(code), str(detail)))

    walk(exc.detail, "")
    code = ErrorCode.VALIDATION_ERROR
    if errors and all(e.code == errors[0].code for e in errors) and errors[0].code in ErrorCode._value2member_map_:
        code = ErrorCode(errors[0].code)
    return ProblemError(
        code=code, status=422, detail=errors[0].message if errors else "Invalid request.", errors=errors
    )


def problem_from_exception(exc: Exception) -> ProblemError | None:
    if isinstance(exc, ProblemError):
        return exc
    if isinstance(exc, exceptions.ParseError):
        return ProblemError(ErrorCode.MALFORMED_REQUEST, 400, "The request body is not valid JSON.")
    if isinstance(exc, exceptions.ValidationError):
        return _validation_problem(exc)
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        return ProblemError(
            ErrorCode.NOT_AUTHENTICATED,
            401,
            "A valid bearer token is required.",
            headers={"WWW-Authenticate": 'Bearer realm="api"'},
        )
    if isinstance(exc, exceptions.PermissionDenied):
        return ProblemError(ErrorCode.PERMISSION_DENIED, 403, "You may not do this.")
    if isinstance(exc, exceptions.NotFound | Http404):
        return ProblemError(ErrorCode.NOT_FOUND, 404, "No such resource.")
    if isinstance(exc, exceptions.MethodNotAllowed):
        return ProblemError(ErrorCode.METHOD_NOT_ALLOWED, 405, "This method is not allowed here.")
    if isinstance(exc, exceptions.NotAcceptable):
        return ProblemError(ErrorCode.NOT_ACCEPTABLE, 406, "Only application/json responses are available.")
    if isinstance(exc, exceptions.UnsupportedMediaType):
        return ProblemError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, 415, "Send the body as application/json.")
    if isinstance(exc, exceptions.Throttled):
        # Round up: a client told 0 would retry at once and be throttled again.
        wait = max(1, math.ceil(getattr(exc, "wait", None) or 1))
        return ProblemError(
            ErrorCode.RATE_LIMITED,
            429,
            f"Too many requests; retry after {wait} seconds.",
            headers={"Retry-After": str(wait)},
        )
    if isinstance(exc, exceptions.APIException):
        status = int(exc.status_code)
        return ProblemError(ErrorCode.INTERNAL_ERROR if status >= 500 else ErrorCode.VALIDATION_ERROR, status, "Error.")
    return None


def problem_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF ``EXCEPTION_HANDLER``: unknown exceptions propagate to Django's 500 handler.

    A request whose authentication failed is counted against the throttles first
    (``config.throttling.throttle_failed_authentication``): over the rate, it is 429.
    """
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        view, request = context.get("view"), context.get("request")
        if view is not None and request is not None:
            exc = throttle_failed_authentication(view, request) or exc
    problem = problem_from_exception(exc)
    if problem is None:
        return None
    return problem_response(problem, context.get("request"))


def _json_problem(request: HttpRequest, problem: ProblemError) -> JsonResponse:
    body = problem_body(problem, getattr(request, "request_id", ""))
    response = JsonResponse(body, status=problem.status, content_type=PROBLEM_CONTENT_TYPE)
    return response


def handler404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return _json_problem(request, ProblemError(ErrorCode.NOT_FOUND, 404, "No such resource."))


def handler500(request: HttpRequest) -> JsonResponse:
    return _json_problem(request, ProblemError(ErrorCode.INTERNAL_ERROR, 500, "An internal error occurred."))


def handler400(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return _json_problem(request, ProblemError(ErrorCode.MALFORMED_REQUEST, 400, "The request is malformed."))


def handler403(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return _json_problem(request, ProblemError(ErrorCode.PERMISSION_DENIED, 403, "You may not do this."))
