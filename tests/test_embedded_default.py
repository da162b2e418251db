"""The API on the embedded default (the embedded PostgreSQL), as ``make run`` serves it without DATABASE_URL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.sandbox_process import SandboxProcess

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def test_the_api_works_on_the_embedded_postgresql_default(
    tmp_path: Path, make_sandbox: Callable[..., SandboxProcess]
) -> None:
    # given no DATABASE_URL (a fresh embedded PostgreSQL in var/ = tmp_path), the development
    # settings and a sandbox gateway, in a process of their own
    gateway = make_sandbox()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "CELERY_", "REDIS_URL", "PG"))}
    env |= {
        "DJANGO_SETTINGS_MODULE": "config.settings.base",
        "VAR_DIR": str(tmp_path),
        "CELERY_BROKER_URL": f"filesystem://{tmp_path / 'broker'}",
        "GATEWAY_URL": gateway.url,
        "PAYMENTS_MAX_DAILY_AMOUNT": "100",
    }

    # when the probe drives the API
    run = subprocess.run(
        [sys.executable, "-m", "tests.embedded_default_probe"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )

    # then creation, replay, key reuse, the per-day limit, reads, cancel and authentication behave as
    # on the suite's PostgreSQL, on the embedded server's socket in var/, and a due payment succeeds
    assert run.returncode == 0, run.stderr[-4000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["vendor"] == "postgresql"
    assert str(seen["socket_dir"]).startswith(str(tmp_path))
    assert seen["create"] == 201
    assert seen["replay"][0] == 201
    assert seen["replay"][1]["Idempotent-Replayed"] == "true"
    assert seen["replayed_same_id"] is True
    assert seen["reused"] == "idempotency_key_reused"
    assert seen["midnight"] == 201
    assert seen["over_limit"] == "daily_amount_limit_exceeded"
    assert (seen["get"], seen["get_again"]) == (200, 200)
    assert seen["cancel"] == "canceled"
    assert seen["bad_token"] == 401
    assert seen["executed"] == "succeeded"
    # and the server that the probe started stopped when the probe, its last user, exited
    assert (tmp_path / "postgres" / "PG_VERSION").exists()
    assert not (tmp_path / "postgres" / "postmaster.pid").exists()
