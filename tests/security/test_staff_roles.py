"""Staff roles are Django groups with least privilege, created by a migration."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import cache
from types import SimpleNamespace

import pytest
from django.apps.registry import Apps
from django.contrib.auth.models import Group
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.test import Client

from accounts.models import User

pytestmark = pytest.mark.django_db

EXPECTED = {
    "support": {
        "payments.view_payment",
        "payments.change_payment",
        "payments.view_paymentevent",
        "accounts.view_user",
    },
    "operations": {
        "django_celery_beat.add_periodictask",
        "django_celery_beat.change_periodictask",
        "django_celery_beat.view_periodictask",
        "django_celery_beat.add_intervalschedule",
        "django_celery_beat.change_intervalschedule",
        "django_celery_beat.view_intervalschedule",
        "django_celery_beat.add_crontabschedule",
        "django_celery_beat.change_crontabschedule",
        "django_celery_beat.view_crontabschedule",
        "payments.view_payment",
    },
    "auditor": {
        "audit.view_auditevent",
        "auditlog.view_logentry",
        "payments.view_paymentevent",
    },
}

AUDIT_EVENTS = "/admin/audit/auditevent/"
AUDITLOG_ENTRIES = "/admin/auditlog/logentry/"
PERIODIC_TASKS = "/admin/django_celery_beat/periodictask/"
CRONTABS = "/admin/django_celery_beat/crontabschedule/"
PAYMENTS = "/admin/payments/payment/"
USERS = "/admin/accounts/user/"


@cache
def _migration_state_apps() -> Apps:
    loader = MigrationLoader(None, ignore_no_migrations=True)
    return loader.project_state(("accounts", "0002_staff_roles")).apps


@pytest.fixture(autouse=True)
def staff_roles(db: None) -> None:
    """Runs the migration's own code: a transactional test elsewhere may have flushed its rows."""
    migration = importlib.import_module("accounts.migrations.0002_staff_roles")
    migration.create_roles(_migration_state_apps(), SimpleNamespace(connection=connection))


def group_permissions(name: str) -> set[str]:
    group = Group.objects.get(name=name)
    return {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.select_related("content_type")}


@pytest.mark.parametrize("role", sorted(EXPECTED))
def test_each_role_has_exactly_its_permissions(role: str) -> None:
    assert group_permissions(role) == EXPECTED[role]


def test_the_migration_is_idempotent() -> None:
    migration = importlib.import_module("accounts.migrations.0002_staff_roles")
    group = Group.objects.get(name="auditor")
    group.permissions.clear()

    migration.create_roles(_migration_state_apps(), SimpleNamespace(connection=connection))

    assert group_permissions("auditor") == EXPECTED["auditor"]
    assert Group.objects.filter(name__in=list(EXPECTED)).count() == 3


def statuses(client: Client, *urls: str) -> list[int]:
    return [client.get(url).status_code for url in urls]


def test_an_auditor_reads_the_audit_trail_and_nothing_else(
    make_staff: Callable[..., User], verified_client: Callable[[User], Client]
) -> None:
    client = verified_client(make_staff("auditor"))

    assert statuses(client, AUDIT_EVENTS, AUDITLOG_ENTRIES) == [200, 200]
    assert statuses(client, PERIODIC_TASKS, CRONTABS, PAYMENTS, USERS) == [403, 403, 403, 403]
    # read-only: the audit trail has no add page for anyone
    assert client.get(AUDIT_EVENTS + "add/").status_code == 403


def test_operations_manage_beat_schedules_and_see_payments_but_not_the_audit_trail(
    make_staff: Callable[..., User], verified_client: Callable[[User], Client]
) -> None:
    client = verified_client(make_staff("operations"))

    assert statuses(client, PERIODIC_TASKS, CRONTABS, PERIODIC_TASKS + "add/", PAYMENTS) == [200, 200, 200, 200]
    assert statuses(client, AUDIT_EVENTS, AUDITLOG_ENTRIES, USERS) == [403, 403, 403]


def test_support_sees_payments_and_users_and_may_cancel(
    make_staff: Callable[..., User], verified_client: Callable[[User], Client]
) -> None:
    user = make_staff("support")
    client = verified_client(user)

    assert statuses(client, PAYMENTS, USERS) == [200, 200]
    assert statuses(client, PERIODIC_TASKS, AUDIT_EVENTS, AUDITLOG_ENTRIES) == [403, 403, 403]
    # the admin's cancel action is gated on change_payment, which support has and operations has not
    assert user.has_perm("payments.change_payment")
    assert 'value="cancel"' in client.get(PAYMENTS).content.decode()


def test_operations_cannot_cancel(make_staff: Callable[..., User], verified_client: Callable[[User], Client]) -> None:
    user = make_staff("operations")
    client = verified_client(user)

    assert not user.has_perm("payments.change_payment")
    assert 'value="cancel"' not in client.get(PAYMENTS).content.decode()


def test_staff_without_a_role_see_nothing(
    make_staff: Callable[..., User], verified_client: Callable[[User], Client]
) -> None:
    client = verified_client(make_staff())

    assert set(statuses(client, AUDIT_EVENTS, PERIODIC_TASKS, PAYMENTS, USERS)) == {403}
