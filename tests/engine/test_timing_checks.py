"""Timing settings are checked against each other: `manage.py check` and worker/beat starts refuse contradictions."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core import checks
from django.core.management.base import SystemCheckError

from config.celery import _refuse_contradictory_timing
from payments.engine.timing import LEASE_MARGIN_SECONDS, gateway_work, submit_work_seconds
from payments.gateways.stripe import DEFAULT_CONCURRENCY as STRIPE_CONCURRENCY

ROOT = Path(__file__).resolve().parents[2]


def timing_errors() -> dict[str, str]:
    return {message.id or "": message.msg for message in checks.run_checks(tags=["payments"]) if message.is_serious()}


@pytest.mark.parametrize("backend", ["sandbox", "stripe"])
def test_the_defaults_agree_with_each_other(settings: Any, backend: str) -> None:
    settings.GATEWAY_BACKEND = backend
    assert timing_errors() == {}


def test_a_submit_lease_shorter_than_the_gateway_work_is_refused(settings: Any) -> None:
    # given a 10 s timeout and a batch the adapter sends in one wave, under a 10 s lease
    settings.SUBMIT_LEASE = timedelta(seconds=10)
    errors = timing_errors()
    # then the check names the settings and the bound
    message = errors["payments.E101"]
    for name in ("SUBMIT_LEASE_SECONDS", "GATEWAY_TIMEOUT_SECONDS", "EXECUTION_BATCH_SIZE"):
        assert name in message
    assert f"= {submit_work_seconds() + LEASE_MARGIN_SECONDS:g} s" in message


def test_a_lease_leaving_no_time_for_a_reconcile_lookup_is_refused(settings: Any) -> None:
    work = gateway_work()
    settings.SUBMIT_LEASE = timedelta(seconds=submit_work_seconds() + LEASE_MARGIN_SECONDS + work.per_try_seconds / 2)
    assert "payments.E102" in timing_errors()


def test_stripe_batches_fit_the_lease_in_one_wave(settings: Any) -> None:
    # A Stripe batch of EXECUTION_BATCH_SIZE goes out in one wave: with 32 threads it took two, and
    # with the SDK's retries (3 tries, 0.5 s and 1 s sleeps) could run past SUBMIT_LEASE.
    settings.GATEWAY_BACKEND = "stripe"
    assert settings.EXECUTION_BATCH_SIZE <= STRIPE_CONCURRENCY
    work = gateway_work()
    assert (work.tries, work.backoff_seconds) == (3, 1.5)
    assert submit_work_seconds() + LEASE_MARGIN_SECONDS <= settings.SUBMIT_LEASE.total_seconds()
    # and the old 32 threads are refused for a batch of 50
    settings.GATEWAY_MAX_CONCURRENCY = 32
    assert "2 wave(s)" in timing_errors()["payments.E101"]


def test_a_dispatch_lease_shorter_than_the_look_ahead_is_refused(settings: Any) -> None:
    settings.SWEEP_LOOKAHEAD = timedelta(seconds=30)
    settings.DISPATCH_LEASE = timedelta(seconds=30)
    message = timing_errors()["payments.E103"]
    assert "DISPATCH_LEASE_SECONDS (30)" in message
    assert "SWEEP_LOOKAHEAD_SECONDS (30)" in message


def test_a_reconcile_ladder_longer_than_the_keys_retention_is_refused(settings: Any) -> None:
    settings.RECONCILE_LADDER_SECONDS = [10.0, 60.0, 3600.0]
    settings.GATEWAY_IDEMPOTENCY_RETENTION_HOURS = 1.0
    message = timing_errors()["payments.E106"]
    assert "RECONCILE_LADDER_SECONDS" in message
    assert "GATEWAY_IDEMPOTENCY_RETENTION_HOURS" in message


def test_a_worker_or_beat_refuses_to_start_on_contradictory_timing(settings: Any) -> None:
    settings.SUBMIT_LEASE = timedelta(seconds=3)
    with pytest.raises(SystemCheckError, match="SUBMIT_LEASE_SECONDS"):
        _refuse_contradictory_timing()


def test_manage_py_check_refuses_contradictory_timing() -> None:
    env = {**os.environ, "SUBMIT_LEASE_SECONDS": "20", "GATEWAY_BACKEND": "stripe"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode != 0
    assert "payments.E101" in result.stderr
    assert "SUBMIT_LEASE_SECONDS (20)" in result.stderr
