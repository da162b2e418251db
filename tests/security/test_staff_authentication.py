"""Staff sign in to the admin with a strong password and a TOTP code; repeated failures lock them out."""

from __future__ import annotations

import base64
from collections.abc import Callable
from io import StringIO
from urllib.parse import parse_qs, urlparse

import pytest
from django.contrib.auth.hashers import make_password
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice
from rest_framework.test import APIClient

import config.settings.base as base_settings
from accounts.models import User
from audit.models import AuditEvent

from .conftest import STAFF_PASSWORD as PASSWORD

pytestmark = pytest.mark.django_db

LOGIN_URL = "/admin/login/?next=/admin/"


def token_for(device: TOTPDevice) -> str:
    return f"{totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits):0{device.digits}d}"


def login(client: Client, username: str, password: str, device: TOTPDevice | None = None, token: str = "") -> int:
    data = {"username": username, "password": password, "next": "/admin/"}
    if device is not None:
        data["otp_device"] = device.persistent_id
        data["otp_token"] = token or token_for(device)
    return client.post(LOGIN_URL, data).status_code


def is_logged_in_to_admin(client: Client) -> bool:
    return client.get("/admin/").status_code == 200


@pytest.fixture
def staff_with_device(make_staff: Callable[..., User]) -> tuple[User, TOTPDevice]:
    user = make_staff(username="agent")
    return user, TOTPDevice.objects.create(user=user, name="phone", confirmed=True)


def test_passwords_are_hashed_with_argon2_outside_the_test_settings(settings) -> None:
    # test settings use a fast hasher; every real environment uses base's list
    assert base_settings.PASSWORD_HASHERS[0] == "django.contrib.auth.hashers.Argon2PasswordHasher"
    settings.PASSWORD_HASHERS = base_settings.PASSWORD_HASHERS

    assert make_password(PASSWORD).startswith("argon2$argon2id$")


def test_passwords_shorter_than_12_characters_are_refused() -> None:
    with pytest.raises(ValidationError):
        validate_password("Tr0ub4dor&3")  # 11 characters
    validate_password(PASSWORD)


def test_a_password_alone_does_not_open_the_admin(staff_with_device: tuple[User, TOTPDevice]) -> None:
    user, _ = staff_with_device
    client = Client()

    assert login(client, user.username, PASSWORD) == 200  # the form again, asking for the code

    assert not is_logged_in_to_admin(client)


def test_a_password_and_a_valid_totp_code_open_the_admin(staff_with_device: tuple[User, TOTPDevice]) -> None:
    user, device = staff_with_device
    client = Client()

    assert login(client, user.username, PASSWORD, device) == 302

    assert is_logged_in_to_admin(client)


def test_a_wrong_totp_code_does_not_open_the_admin(staff_with_device: tuple[User, TOTPDevice]) -> None:
    user, device = staff_with_device
    wrong = f"{(int(token_for(device)) + 1) % 10**6:06d}"
    client = Client()

    login(client, user.username, PASSWORD, device, token=wrong)

    assert not is_logged_in_to_admin(client)


def test_staff_without_a_device_cannot_enter_even_when_logged_in(make_staff: Callable[..., User]) -> None:
    user = make_staff()
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")

    assert not is_logged_in_to_admin(client)


def test_five_wrong_passwords_lock_the_account_out_at_that_address(
    staff_with_device: tuple[User, TOTPDevice], make_client: Callable[[User], APIClient]
) -> None:
    user, device = staff_with_device
    client = Client(REMOTE_ADDR="198.51.100.7")

    # when the wrong password is tried five times
    statuses = [login(client, user.username, "wrong password, wrong") for _ in range(5)]

    # then the fifth attempt locks the account out (429), and even the right password and code fail
    assert statuses == [200, 200, 200, 200, 429]
    assert login(client, user.username, PASSWORD, device) == 429
    assert not is_logged_in_to_admin(client)
    # the lock-out is per username and address: the same person elsewhere can still sign in
    elsewhere = Client(REMOTE_ADDR="203.0.113.20")
    assert login(elsewhere, user.username, PASSWORD, device) == 302
    # and the API's bearer tokens are unaffected
    assert make_client(user).get("/api/v1/payments").status_code == 200


def test_the_admin_login_page_has_a_strict_content_security_policy() -> None:
    response = Client().get("/admin/login/")

    policy = response["Content-Security-Policy"]
    assert "default-src 'self'" in policy
    assert "script-src 'self'" in policy
    assert "style-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy


def test_json_responses_may_load_nothing() -> None:
    response = Client().get("/healthz")

    assert set(response["Content-Security-Policy"].split("; ")) == {"default-src 'none'", "frame-ancestors 'none'"}


def test_the_api_docs_run_only_the_sites_own_scripts() -> None:
    response = Client().get("/api/docs/")

    policy = response["Content-Security-Policy"]
    assert "script-src 'self';" in policy + ";"
    assert "cdn" not in response.content.decode().lower()
    assert "frame-ancestors 'none'" in policy


def test_staff_sessions_expire_after_15_idle_minutes() -> None:
    assert base_settings.SESSION_COOKIE_AGE == 15 * 60
    assert base_settings.SESSION_SAVE_EVERY_REQUEST is True


def test_add_staff_totp_creates_a_device_and_prints_its_uri_last(make_staff: Callable[..., User]) -> None:
    user = make_staff(username="newagent")
    out = StringIO()

    call_command("add_staff_totp", "newagent", stdout=out, stderr=StringIO())

    uri = out.getvalue().strip().splitlines()[-1]
    parsed = urlparse(uri)
    assert parsed.scheme == "otpauth"
    assert parsed.netloc == "totp"
    device = TOTPDevice.objects.get(user=user)
    assert device.confirmed
    # the secret in the URI is the device's: a code computed from it signs the person in
    secret = parse_qs(parsed.query)["secret"][0]
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    assert key == device.bin_key
    code = f"{totp(key, step=30, t0=0, digits=6, drift=0):06d}"
    client = Client()
    assert login(client, "newagent", PASSWORD, device, token=code) == 302
    assert AuditEvent.objects.filter(action="staff_totp.created", target_id=str(device.pk)).exists()


def test_add_staff_totp_refuses_non_staff_and_a_second_device_without_replace(
    make_staff: Callable[..., User], make_user: Callable[..., User]
) -> None:
    make_user("customer")
    with pytest.raises(CommandError, match="not staff"):
        call_command("add_staff_totp", "customer", stdout=StringIO(), stderr=StringIO())

    make_staff(username="agent2")
    call_command("add_staff_totp", "agent2", stdout=StringIO(), stderr=StringIO())
    with pytest.raises(CommandError, match="--replace"):
        call_command("add_staff_totp", "agent2", stdout=StringIO(), stderr=StringIO())
    out = StringIO()
    call_command("add_staff_totp", "agent2", "--replace", "--qr", stdout=out, stderr=StringIO())
    assert TOTPDevice.objects.filter(user__username="agent2").count() == 1
    assert out.getvalue().strip().splitlines()[-1].startswith("otpauth://totp/")
    assert "█" in out.getvalue() or "▀" in out.getvalue()  # the QR code, drawn with block characters


def test_tokens_are_single_use(staff_with_device: tuple[User, TOTPDevice]) -> None:
    user, device = staff_with_device
    code = token_for(device)
    assert login(Client(), user.username, PASSWORD, device, token=code) == 302
    device.refresh_from_db()

    replay = Client()
    login(replay, user.username, PASSWORD, device, token=code)

    assert not is_logged_in_to_admin(replay)
