"""The production settings pass Django's deployment checklist and refuse to start without secrets."""

from __future__ import annotations

import os
import secrets
import string
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[2]


def run_manage(*args: str, **overrides: str) -> subprocess.CompletedProcess[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in {"SECRET_KEY", "FIELD_ENCRYPTION_KEYS", "FIELD_HMAC_KEY", "ALLOWED_HOSTS", "SENTRY_DSN", "DJANGO_DEBUG"}
    }
    env.update(DJANGO_SETTINGS_MODULE="config.settings.production", **overrides)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def random_secret_key() -> str:
    alphabet = string.ascii_letters + string.digits + "!@#%^&*(-_=+)"
    return "".join(secrets.choice(alphabet) for _ in range(50))


def check_deploy(**overrides: str) -> subprocess.CompletedProcess[str]:
    """``check --deploy --fail-level WARNING`` with every production secret set (to real values unless overridden)."""
    secrets_env = {
        "SECRET_KEY": random_secret_key(),
        "ALLOWED_HOSTS": "example.com",
        "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "FIELD_HMAC_KEY": secrets.token_urlsafe(32),
    }
    return run_manage("check", "--deploy", "--fail-level", "WARNING", **(secrets_env | overrides))


def test_check_deploy_passes_with_the_production_settings() -> None:
    result = check_deploy()

    assert result.returncode == 0, result.stdout + result.stderr


def test_production_refuses_to_start_without_encryption_keys() -> None:
    result = run_manage(
        "check", SECRET_KEY=random_secret_key(), ALLOWED_HOSTS="example.com", FIELD_HMAC_KEY=secrets.token_urlsafe(32)
    )

    assert result.returncode != 0
    assert "FIELD_ENCRYPTION_KEYS" in result.stderr


@pytest.mark.parametrize("hmac_key", [None, "too-short"])
def test_production_refuses_to_start_without_a_real_search_hmac_key(hmac_key: str | None) -> None:
    keys = {"FIELD_HMAC_KEY": hmac_key} if hmac_key else {}
    result = run_manage(
        "check",
        SECRET_KEY=random_secret_key(),
        ALLOWED_HOSTS="example.com",
        FIELD_ENCRYPTION_KEYS=Fernet.generate_key().decode(),
        **keys,
    )

    assert result.returncode != 0
    assert "FIELD_HMAC_KEY" in result.stderr


def test_check_deploy_flags_the_development_search_hmac_key() -> None:
    from common.crypto import development_hmac_key

    secret_key = random_secret_key()
    result = check_deploy(SECRET_KEY=secret_key, FIELD_HMAC_KEY=development_hmac_key(secret_key))

    assert result.returncode != 0
    assert "payments.W002" in result.stdout + result.stderr


def test_check_deploy_flags_the_development_encryption_key() -> None:
    from common.crypto import development_key

    secret_key = random_secret_key()
    result = check_deploy(SECRET_KEY=secret_key, FIELD_ENCRYPTION_KEYS=development_key(secret_key))

    assert result.returncode != 0
    assert "payments.W001" in result.stdout + result.stderr
