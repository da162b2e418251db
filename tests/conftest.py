"""Shared fixtures: users, their tokens and API clients (owner / outsider), verified staff clients, the sandbox."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.db import connection
from django.test import Client
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.plugins.otp_totp.models import TOTPDevice
from rest_framework.test import APIClient

from accounts.models import User
from accounts.services import token_issue
from payments.models import PaymentEvent
from payments.statuses import is_allowed
from tests.sandbox_process import SandboxProcess

_DATABASE_FIXTURES = {"db", "transactional_db", "django_db_reset_sequences", "django_db_serialized_rollback"}


@pytest.fixture(autouse=True)
def _every_event_is_a_transition_of_the_table(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test that used the database: each event any code wrote is a move of
    ``statuses.TRANSITIONS`` with one of its reasons. The whole suite, engine processes
    included, thereby checks that every transition the code performs is in the table."""
    uses_database = request.node.get_closest_marker("django_db") or _DATABASE_FIXTURES & set(request.fixturenames)
    if uses_database:
        # Set up before this fixture's body ends, so torn down (rolled back, flushed) after its check.
        request.getfixturevalue("_django_db_helper")
    yield
    # A test that ends inside a failed atomic block (a refusal raised with savepoint=False) can
    # read nothing more: its writes are rolled back with the test anyway.
    if uses_database and not connection.needs_rollback:
        moves = PaymentEvent.objects.values_list("from_status", "to_status", "reason").distinct()
        outside = [move for move in moves if not is_allowed(*move)]
        assert not outside, f"events outside statuses.TRANSITIONS: {outside}"


@pytest.fixture
def make_user(db: None) -> Callable[..., User]:
    counter = iter(range(1, 1_000_000))

    def make(username: str | None = None) -> User:
        return User.objects.create_user(username=username or f"user{next(counter)}")

    return make


@pytest.fixture
def make_client() -> Callable[[User], APIClient]:
    def make(user: User) -> APIClient:
        client = APIClient()
        raw = token_issue(user=user, actor="test").raw
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return client

    return make


@pytest.fixture
def verified_client() -> Callable[[User], Client]:
    """A client logged in as ``user`` whose session is verified by a TOTP device (what the OTP login does)."""

    def make(user: User) -> Client:
        device = TOTPDevice.objects.create(user=user, name="test", confirmed=True)
        client = Client()
        client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
        session = client.session
        session[DEVICE_ID_SESSION_KEY] = device.persistent_id
        session.save()
        return client

    return make


@pytest.fixture
def owner(make_user: Callable[..., User]) -> User:
    return make_user("alice")


@pytest.fixture
def outsider(make_user: Callable[..., User]) -> User:
    return make_user("mallory")


@pytest.fixture
def api(owner: User, make_client: Callable[[User], APIClient]) -> APIClient:
    return make_client(owner)


@pytest.fixture
def outsider_api(outsider: User, make_client: Callable[[User], APIClient]) -> APIClient:
    return make_client(outsider)


# --- the sandbox gateway as a subprocess (tests/sandbox_process.py); no database -----------------------


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    """One gateway for the session; it must exit cleanly (code 0) on SIGTERM at the end."""
    root = tmp_path_factory.mktemp("sandbox")
    process = SandboxProcess(root / "data", root / "gateway.log", {"GATEWAY_LOG_LEVEL": "WARNING"})
    process.start()
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture
def make_sandbox(tmp_path: Path) -> Iterator[Callable[..., SandboxProcess]]:
    """Gateways of the test's own, for tests that stop, restart, reset or configure one; stopped at the end.

    ``make_sandbox(data_dir=None, **extra_env)``: ``GATEWAY_*`` variables for that process only.
    """
    started: list[SandboxProcess] = []

    def make(data_dir: Path | None = None, **extra_env: str) -> SandboxProcess:
        process = SandboxProcess(data_dir or tmp_path / "data", tmp_path / f"gateway{len(started)}.log", extra_env)
        process.start()
        started.append(process)
        return process

    yield make
    for process in started:
        process.stop()
