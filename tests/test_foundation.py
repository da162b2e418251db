"""The project's foundation: migrations, tokens, health endpoints."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.test import Client

from accounts.models import ApiToken, User, hash_token


def test_it_has_no_missing_migrations(db: None) -> None:
    # makemigrations --check exits non-zero when a model change has no migration.
    call_command("makemigrations", "--check", "--dry-run", stdout=StringIO())


def test_it_runs_against_postgresql(db: None) -> None:
    from django.db import connection

    assert connection.vendor == "postgresql"


def test_issue_token_creates_the_user_and_prints_the_token_last(db: None) -> None:
    out = StringIO()
    call_command("issue_token", "newbie", "--create", stdout=out)
    raw = out.getvalue().strip().splitlines()[-1]
    user = User.objects.get(username="newbie")
    token = ApiToken.objects.get(user=user)
    # Only the hash is stored.
    assert token.token_hash == hash_token(raw)
    assert raw not in token.token_hash


def test_issue_token_refuses_an_unknown_user_without_create(db: None) -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        call_command("issue_token", "ghost", stdout=StringIO())


def test_healthz_answers_ok() -> None:
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response["X-Request-ID"]


def test_readyz_checks_database_and_broker(db: None) -> None:
    response = Client().get("/readyz")
    assert response.status_code == 200, response.content
    assert response.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_it_echoes_a_client_request_id() -> None:
    response = Client().get("/healthz", HTTP_X_REQUEST_ID="abc-123")
    assert response["X-Request-ID"] == "abc-123"


def test_metrics_are_prometheus_text() -> None:
    response = Client().get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
