"""Schemathesis against the OpenAPI document: no 5xx, and every response as documented (OWASP API8, API9).

The document is the one ``/api/schema/`` serves (drf-spectacular's generator, no HTTP needed
to load it); requests go in-process to the WSGI application (``config.wsgi``), through every
middleware, against the real PostgreSQL test database, authenticated with a real bearer token.

Each operation gets the explicit examples of the document, schemathesis' coverage phase
(boundary values, missing and malformed parameters) and ``FUZZ_MAX_EXAMPLES`` generated cases
(default 25: CI), both schema-conforming and deliberately invalid ones. ``make fuzz`` runs the
same test with 500. Generation is derandomised: CI runs are reproducible.

Random UUIDs and free-form strings would almost never reach a real payment or a valid
create, so ``steer`` maps some of them onto real ones: a well-formed ``payment_id`` onto
one of the fuzzing user's payments (scheduled, processing, failed) or another user's,
some non-empty ``scheduled_for`` / ``amount`` strings onto plausible values, and most
valid ``Idempotency-Key`` values onto unique ones. Only values the schema accepts are
replaced, by values it accepts too (their schemas are plain non-empty strings and UUIDs),
so no case changes from schema-valid to invalid or back. The extra check
``no_other_users_payment`` fails if another user's payment ever shows (OWASP API1).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from accounts.models import User
from accounts.services import token_issue
from config.wsgi import application
from payments.models import Payment
from payments.statuses import Status
from tests.factories import advance, schedule_payment

MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "25"))

CONFIG = schemathesis.Config.from_str(
    f"""
[generation]
mode = "all"
max-examples = {MAX_EXAMPLES}
deterministic = true
database = "none"
# The token is always the fuzzing user's real one (added to every call); unauthenticated and
# wrongly authenticated calls are the ignored_auth check's job.
with-security-parameters = false

[phases.examples]
enabled = true
[phases.coverage]
enabled = true
[phases.fuzzing]
enabled = true
[phases.stateful]
enabled = false
"""
)

OTHER_USERS_PAYMENT = uuid.UUID("0190f2c4-0000-7000-8000-00000000beef")


def no_other_users_payment(ctx: Any, response: Any, case: schemathesis.Case[Any]) -> None:
    """Another user's payment never appears in an answer (its id is fixed, see ``world``)."""
    if str(OTHER_USERS_PAYMENT) in response.text and response.status_code < 400:
        raise AssertionError(f"another user's payment was shown: {response.status_code} {case.path}")


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
    no_other_users_payment,
]


def openapi_document() -> dict[str, Any]:
    """What ``GET /api/schema/`` serves, as JSON."""
    document = SchemaGenerator().get_schema(request=None, public=True)
    loaded: dict[str, Any] = json.loads(OpenApiJsonRenderer().render(document))
    return loaded


schema = schemathesis.openapi.from_dict(openapi_document(), config=CONFIG)
schema.app = application


@dataclass(frozen=True)
class World:
    headers: dict[str, str]
    payment_ids: tuple[str, ...]  # the fuzzing user's, in several states, and another user's


def _schedule(owner: User, days: int) -> Payment:
    scheduled_for = datetime.now(UTC).replace(microsecond=0) + timedelta(days=days)
    return schedule_payment(
        owner,
        actor="fuzz",
        description="rent",
        metadata={"invoice": "7"},
        scheduled_for=scheduled_for,
        time_zone="Europe/Berlin",
    )


def _move(payment: Payment, *steps: tuple[str, dict[str, Any]]) -> None:
    for status, changes in steps:
        advance(payment.pk, status, actor="fuzz", changes=changes)


@pytest.fixture
def world(db: None) -> Iterator[World]:
    """A real user's token and payments; requests run inside the test's transaction."""
    user = User.objects.create_user(username="fuzzer")
    token = token_issue(user=user, actor="fuzz").raw
    scheduled, processing, failed = (_schedule(user, days) for days in (5, 6, 7))
    _move(processing, (Status.DISPATCHED, {}), (Status.SUBMITTING, {"attempts": 1}))
    _move(
        failed,
        (Status.DISPATCHED, {}),
        (Status.SUBMITTING, {"attempts": 1, "gateway_reference": "ch_fuzz"}),
        (Status.FAILED, {"failure_code": "card_declined", "failure_message": "Declined."}),
    )
    other = _schedule(User.objects.create_user(username="someone-else"), 5)
    other.pk = None
    other.id = OTHER_USERS_PAYMENT  # a second payment of that user, with an id the check knows
    other.save(force_insert=True)
    # Django closes "old" connections around each request; inside the test transaction that would
    # end it. Django's own test client disconnects the same receivers.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield World(
            headers={"Authorization": f"Bearer {token}"},
            payment_ids=(str(scheduled.pk), str(processing.pk), str(failed.pk), str(OTHER_USERS_PAYMENT)),
        )
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


_VALID_KEY = re.compile(r"[ -~]{1,240}")
_key_suffixes = itertools.count()


def _bucket(value: str, buckets: int) -> int:
    return zlib.crc32(value.encode("utf-8", "surrogatepass")) % buckets


def steer(case: schemathesis.Case[Any], world: World) -> None:
    """Map some generated values onto real ones, keeping their type (see the module doc)."""
    payment_id = case.path_parameters.get("payment_id") if case.path_parameters else None
    if isinstance(payment_id, str):
        try:
            uuid.UUID(payment_id)
        except ValueError:
            pass  # a malformed id stays: it must be a 404
        else:
            choice = _bucket(payment_id, len(world.payment_ids) + 1)
            if choice < len(world.payment_ids):  # else: an unknown id, a 404
                case.path_parameters["payment_id"] = world.payment_ids[choice]
    headers: dict[str, Any] = case.headers if isinstance(case.headers, dict) else {}
    key = headers.get("Idempotency-Key")
    if isinstance(key, str) and _VALID_KEY.fullmatch(key) and _bucket(key, 4):
        # Generation favours short keys, so most would be reuses (422): 3 in 4 valid keys become unique.
        headers["Idempotency-Key"] = f"{key}-{next(_key_suffixes)}"
    body = case.body
    if isinstance(body, dict):
        scheduled_for = body.get("scheduled_for")
        if isinstance(scheduled_for, str) and scheduled_for and _bucket(scheduled_for, 2) == 0:
            instant = datetime.now(UTC) + timedelta(days=1 + _bucket(scheduled_for, 700))
            wall_time = instant.strftime("%Y-%m-%dT%H:%M:%S")
            body["scheduled_for"] = wall_time if isinstance(body.get("time_zone"), str) else wall_time + "Z"
        amount = body.get("amount")
        if isinstance(amount, str) and amount and _bucket(amount, 2) == 0:
            body["amount"] = f"{1 + _bucket(amount, 5000)}.{_bucket(amount, 100):02d}"


@schema.parametrize()
@hypothesis_settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_behaves_as_its_openapi_document_says(case: schemathesis.Case[Any], world: World) -> None:
    steer(case, world)
    case.call_and_validate(headers=world.headers, checks=CHECKS)


# --- What fuzzing found, pinned down ---------------------------------------------------


@pytest.mark.parametrize(
    "instant",
    [
        "5720-05-16T11:31:53-19:39",  # an offset PostgreSQL refuses (it takes up to 15:59): was a 500
        "0001-01-01T00:00:00+01:00",  # no such instant in UTC (year 0): was a 500
        "9999-12-31T23:00:00-05:00",  # no such instant in UTC (year 10000)
    ],
)
def test_list_filters_at_the_edges_of_time_are_422_not_500(api: Any, instant: str) -> None:
    response = api.get("/api/v1/payments", {"scheduled_after": instant, "scheduled_before": instant})

    assert response.status_code in (200, 422), response.content
    if response.status_code == 422:
        assert response.json()["code"] == "invalid_filter"


@pytest.mark.parametrize("instant", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:00:00-05:00"])
def test_a_forged_cursor_at_the_edge_of_time_is_422_not_500(api: Any, instant: str) -> None:
    raw = f"v1|{instant}|{uuid.UUID(int=1)}".encode()
    cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")

    response = api.get("/api/v1/payments", {"cursor": cursor})

    assert response.status_code == 422, response.content
    assert response.json()["code"] == "invalid_cursor"


def test_the_document_says_what_the_api_accepts_and_returns() -> None:
    document = openapi_document()
    components = document["components"]["schemas"]
    create = document["paths"]["/api/v1/payments"]["post"]
    listing = document["paths"]["/api/v1/payments"]["get"]
    # gateway_reference is null until the gateway gave a charge id
    assert components["Payment"]["properties"]["gateway_reference"]["nullable"] is True
    # metadata values may be empty strings; null means "left out" for the time policies too
    assert "minLength" not in components["PaymentCreateRequest"]["properties"]["metadata"]["additionalProperties"]
    for policy in ("on_nonexistent_time", "on_ambiguous_time"):
        assert components["PaymentCreateRequest"]["properties"][policy]["nullable"] is True
    # the Idempotency-Key's format and limit's minimum are part of the document
    key = next(p for p in create["parameters"] if p["name"] == "Idempotency-Key")
    assert key["schema"]["pattern"] == "^[ -~]{1,255}$"
    limit = next(p for p in listing["parameters"] if p["name"] == "limit")
    assert limit["schema"]["minimum"] == 1
