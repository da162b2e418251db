"""Workers keep their database connection between tasks (a new one costs ~8 ms of CPU)."""

from __future__ import annotations

import pytest
from celery.fixups.django import DjangoWorkerFixup  # type: ignore[attr-defined]  # not in celery-types
from django.db import connection

from config.celery import _recycle_database_connections, app


def test_celerys_fixup_does_not_close_connections_around_every_task() -> None:
    # Without CELERY_DB_REUSE_MAX the fix-up closes every connection before and after each task.
    assert DjangoWorkerFixup(app).db_reuse_max


@pytest.mark.django_db(transaction=True)
def test_a_healthy_connection_survives_the_task_boundary() -> None:
    # Given an open connection within CONN_MAX_AGE (300 s in the settings)
    assert connection.settings_dict["CONN_MAX_AGE"] > 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid_before,) = cursor.fetchone()
    # When a task ends and the next begins
    _recycle_database_connections()
    _recycle_database_connections()
    # Then the same backend serves the next task
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid_after,) = cursor.fetchone()
    assert pid_after == pid_before


@pytest.mark.django_db(transaction=True)
def test_an_expired_connection_is_replaced_at_the_task_boundary() -> None:
    # Given a connection past CONN_MAX_AGE
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid_before,) = cursor.fetchone()
    connection.close_at = 0.0
    # When a task boundary passes
    _recycle_database_connections()
    # Then a new backend serves the next task
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid_after,) = cursor.fetchone()
    assert pid_after != pid_before
