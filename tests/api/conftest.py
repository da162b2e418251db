"""Helpers for the end-user API tests: a frozen database clock, bodies, problem checks."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from rest_framework.test import APIClient

from payments import selectors

# The database clock as the API sees it (selectors.database_now), frozen for the tests:
# every scheduled_for below is relative to it, so the suite passes on any date.
FIXED_NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
REAL_DATABASE_NOW = selectors.database_now

PAYMENTS_URL = "/api/v1/payments"
PROBLEM_KEYS = {"type", "title", "status", "detail", "code", "request_id"}
PAYMENT_KEYS = {
    "id",
    "status",
    "amount",
    "currency",
    "payee",
    "description",
    "scheduled_for",
    "time_zone",
    "scheduled_local",
    "created_at",
    "updated_at",
    "executed_at",
    "canceled_at",
    "attempts",
    "failure",
    "gateway_reference",
    "metadata",
}
# Luhn-valid test card numbers (Visa, Mastercard, Amex) in the forms people type them.
PANS = ["4111111111111111", "5555 5555 5555 4444", "3782-822463-10005"]


class DatabaseClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture(autouse=True)
def db_clock(monkeypatch: pytest.MonkeyPatch) -> DatabaseClock:
    clock = DatabaseClock(FIXED_NOW)
    monkeypatch.setattr(selectors, "database_now", lambda: clock.now)
    return clock


DROP = object()


def payment_body(**overrides: Any) -> dict[str, Any]:
    """A valid create body; ``field=DROP`` leaves a field out."""
    body: dict[str, Any] = {
        "amount": "125.50",
        "currency": "EUR",
        "payment_method": "pm_card_visa",
        "payee": {"name": "ACME Utilities", "account": "DE21370400440532014321"},
        "description": "March rent",
        "scheduled_for": "2027-03-14T07:30:00Z",
        "metadata": {"invoice": "2027-03"},
    }
    for name, value in overrides.items():
        if value is DROP:
            body.pop(name, None)
        else:
            body[name] = value
    return body


_keys = iter(range(1, 10_000_000))


def new_key() -> str:
    return f"test-key-{next(_keys)}"


def create(api: APIClient, body: Any = None, *, key: str | None = "auto", **extra: Any) -> Any:
    """POST /api/v1/payments as JSON with an Idempotency-Key (a fresh one unless given)."""
    headers = dict(extra)
    if key is not None:
        headers["HTTP_IDEMPOTENCY_KEY"] = new_key() if key == "auto" else key
    return api.post(PAYMENTS_URL, payment_body() if body is None else body, format="json", **headers)


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    """The contract's error shape: problem+json with type/title/status/detail/code/request_id."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/problem+json")
    body: dict[str, Any] = json.loads(response.content)
    assert set(body) >= PROBLEM_KEYS, body
    assert body["status"] == status
    assert body["code"] == code, body
    assert body["type"].endswith(code)
    assert body["request_id"] == response["X-Request-ID"]
    return body


def error_codes(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(error["field"], error["code"]) for error in body.get("errors", [])]


def all_table_text() -> str:
    """Every row of every table of the test database, as text (to prove a value is stored nowhere)."""
    chunks: list[str] = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f'SELECT row_to_json(t)::text FROM "{table}" t')  # noqa: S608 - names from the catalog
            chunks.extend(row[0] for row in cursor.fetchall())
    return "\n".join(chunks)


@pytest.fixture
def make_payment(api: APIClient) -> Callable[..., dict[str, Any]]:
    """Create a payment through the API and return its JSON."""

    def make(**overrides: Any) -> dict[str, Any]:
        response = create(api, payment_body(**overrides))
        assert response.status_code == 201, response.content
        result: dict[str, Any] = response.json()
        return result

    return make
