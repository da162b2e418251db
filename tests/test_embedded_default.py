"""The API on the embedded default (SQLite), as ``make run`` serves it without DATABASE_URL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def test_the_api_works_on_the_embedded_sqlite_default(tmp_path: Path) -> None:
    # given a fresh SQLite database and the development settings, in a process of their own
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "CELERY_", "REDIS_URL"))}
    env |= {
        "DJANGO_SETTINGS_MODULE": "config.settings.base",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "CELERY_BROKER_URL": f"filesystem://{tmp_path / 'broker'}",
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

    # then creation, replay, key reuse, the per-day limit, reads, cancel and authentication behave as on PostgreSQL
    assert run.returncode == 0, run.stderr[-4000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["vendor"] == "sqlite"
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
