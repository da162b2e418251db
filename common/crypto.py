"""Authenticated encryption of personal data at rest, under rotatable keys.

Keys come from ``settings.FIELD_ENCRYPTION_KEYS`` (env ``FIELD_ENCRYPTION_KEYS``,
comma-separated Fernet keys, newest first). New values are always encrypted
under the newest key; every configured key can decrypt, so a retired key stays
in the list until ``manage.py rotate_encryption_keys`` has re-encrypted every
row under the newest one (``--check`` says when).

Stored form of one value::

    enc1:<key id>:<Fernet token>

* ``enc1`` versions the format, so a later scheme (e.g. AES-GCM-SIV) can live
  beside this one during a migration.
* ``<key id>`` is 8 hex characters of a one-way hash of the key: it tells which
  key to decrypt with, and lets the rotate command find rows under retired keys
  without decrypting them. It reveals nothing about the key.
* Fernet is AES-128-CBC with HMAC-SHA256 (encrypt-then-MAC) and a random IV:
  tampering is detected, and equal plaintexts give different ciphertexts (so
  equality lookups on encrypted columns cannot work; see ``payments.fields``).

A value without the ``enc1:`` prefix is legacy plaintext: it is returned as is,
and the rotate command encrypts it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

__all__ = [
    "PREFIX",
    "FieldDecryptionError",
    "decrypt_str",
    "development_hmac_key",
    "development_key",
    "encrypt_str",
    "generate_key",
    "is_encrypted",
    "is_under_newest_key",
    "key_id",
    "key_id_of",
    "normalize_account",
    "payee_account_hmac",
    "rotate_token",
]

PREFIX = "enc1:"
_KEY_ID_LENGTH = 8


class FieldDecryptionError(Exception):
    """A stored value cannot be decrypted: its key is not configured, or it was tampered with."""


def generate_key() -> str:
    """A new random key in the format ``FIELD_ENCRYPTION_KEYS`` expects."""
    return Fernet.generate_key().decode("ascii")


def development_key(secret_key: str) -> str:
    """A key derived from ``SECRET_KEY``: for laptops and tests only (production requires real keys)."""
    digest = hashlib.sha256(b"scheduled-payments/field-encryption/dev:" + secret_key.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii")


def development_hmac_key(secret_key: str) -> str:
    """The search-HMAC key derived from ``SECRET_KEY``: laptops and tests only (production requires its own)."""
    return hashlib.sha256(b"scheduled-payments/field-hmac/dev:" + secret_key.encode("utf-8")).hexdigest()


def normalize_account(account: str) -> str:
    """The form of an account identifier that is hashed: upper case, without whitespace.

    ``"de89 3704 0044 0532 0130 00"`` and ``"DE89370400440532013000"`` are the same account.
    Nothing else is removed: dashes or dots in a domestic account number are part of it.
    """
    return "".join(account.split()).upper()


def payee_account_hmac(account: str) -> str:
    """HMAC-SHA256 (hex) of the normalised account under ``FIELD_HMAC_KEY``: the searchable stand-in.

    Deterministic on purpose (equal accounts give equal values, so an index finds them), and
    useless without the key: an attacker with the database alone cannot test guesses against it,
    unlike a plain hash of a low-entropy account number. Exact match only.
    """
    key = str(settings.FIELD_HMAC_KEY).encode("utf-8")
    return hmac.new(key, normalize_account(account).encode("utf-8"), hashlib.sha256).hexdigest()


# Domain separation: an idempotency key equal to some payee account gives an unrelated value.
IDEMPOTENCY_KEY_HMAC_PREFIX = b"scheduled-payments/idempotency-key:"


def idempotency_key_hmac(key: str, *, hmac_key: str | None = None) -> str:
    """HMAC-SHA256 (hex) of a client's ``Idempotency-Key``: what is stored and looked up instead of the key.

    Keys are compared exactly (no normalisation): ``"A"`` and ``"a"`` are two keys, as they were in clear.
    """
    secret = str(settings.FIELD_HMAC_KEY if hmac_key is None else hmac_key).encode("utf-8")
    return hmac.new(secret, IDEMPOTENCY_KEY_HMAC_PREFIX + key.encode("utf-8"), hashlib.sha256).hexdigest()


def idempotency_key_hmacs(key: str) -> list[str]:
    """The key's HMAC under ``FIELD_HMAC_KEY`` first, then under each of ``FIELD_HMAC_PREVIOUS_KEYS``.

    A record stored before ``FIELD_HMAC_KEY`` changed is still found (and replayed) while it is
    retained, so a client's retry across a key change never creates a second payment.
    """
    previous = [str(old) for old in getattr(settings, "FIELD_HMAC_PREVIOUS_KEYS", [])]
    return [idempotency_key_hmac(key), *(idempotency_key_hmac(key, hmac_key=old) for old in previous)]


def key_id(key: str | bytes) -> str:
    """The public identifier of a key: 8 hex characters of a domain-separated SHA-256 of it."""
    raw = key.encode("ascii") if isinstance(key, str) else key
    return hashlib.sha256(b"scheduled-payments/field-encryption/key-id:" + raw.strip()).hexdigest()[:_KEY_ID_LENGTH]


@dataclass(frozen=True)
class _Keyring:
    newest_id: str
    newest: Fernet
    by_id: dict[str, Fernet]
    # Newest first: MultiFernet.rotate() decrypts with any key and re-encrypts with the first.
    multi: MultiFernet


def _load_keyring(keys: Any) -> _Keyring:
    if isinstance(keys, str):
        keys = keys.split(",")
    cleaned = [str(key).strip() for key in keys or () if str(key).strip()]
    if not cleaned:
        raise ImproperlyConfigured("FIELD_ENCRYPTION_KEYS is empty: set it to one or more Fernet keys, newest first.")
    fernets: list[tuple[str, Fernet]] = []
    for position, key in enumerate(cleaned, start=1):
        try:
            fernet = Fernet(key.encode("ascii"))
        except (ValueError, UnicodeEncodeError) as exc:
            # Never echo the key itself.
            raise ImproperlyConfigured(
                f"FIELD_ENCRYPTION_KEYS entry {position} is not a Fernet key (32 url-safe base64-encoded bytes)."
            ) from exc
        fernets.append((key_id(key), fernet))
    ids = [kid for kid, _ in fernets]
    if len(set(ids)) != len(ids):
        raise ImproperlyConfigured("FIELD_ENCRYPTION_KEYS lists the same key twice.")
    return _Keyring(
        newest_id=ids[0],
        newest=fernets[0][1],
        by_id=dict(fernets),
        multi=MultiFernet([fernet for _, fernet in fernets]),
    )


_lock = threading.Lock()
_keyring: _Keyring | None = None


def _get_keyring() -> _Keyring:
    global _keyring
    keyring = _keyring
    if keyring is None:
        with _lock:
            if _keyring is None:
                _keyring = _load_keyring(settings.FIELD_ENCRYPTION_KEYS)
            keyring = _keyring
    return keyring


def reset_keyring() -> None:
    """Forget the cached keys (tests, or after changing settings at run time)."""
    global _keyring
    with _lock:
        _keyring = None


@receiver(setting_changed)
def _reset_on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "FIELD_ENCRYPTION_KEYS":
        reset_keyring()


def is_encrypted(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def _split(token: str) -> tuple[str, str]:
    """``(key id, Fernet token)`` of a stored value."""
    kid, sep, fernet_token = token[len(PREFIX) :].partition(":")
    if not sep or len(kid) != _KEY_ID_LENGTH or not fernet_token:
        raise FieldDecryptionError("Malformed encrypted value.")
    return kid, fernet_token


def encrypt_str(plaintext: str) -> str:
    keyring = _get_keyring()
    return f"{PREFIX}{keyring.newest_id}:{keyring.newest.encrypt(plaintext.encode('utf-8')).decode('ascii')}"


def decrypt_str(token: str) -> str:
    """The plaintext of a stored value; legacy plaintext (no prefix) is returned unchanged."""
    if not is_encrypted(token):
        return token
    kid, fernet_token = _split(token)
    fernet = _get_keyring().by_id.get(kid)
    if fernet is None:
        raise FieldDecryptionError(
            f"Encrypted with key {kid}, which is not in FIELD_ENCRYPTION_KEYS: "
            "a key was retired before rotate_encryption_keys re-encrypted every row."
        )
    try:
        return fernet.decrypt(fernet_token.encode("ascii")).decode("utf-8")
    except InvalidToken:
        raise FieldDecryptionError(f"An encrypted value under key {kid} failed authentication.") from None


def key_id_of(token: str) -> str | None:
    """The id of the key a stored value is encrypted under, or None for plaintext."""
    if not is_encrypted(token):
        return None
    return _split(token)[0]


def is_under_newest_key(token: str) -> bool:
    try:
        return is_encrypted(token) and key_id_of(token) == _get_keyring().newest_id
    except FieldDecryptionError:  # malformed
        return False


def newest_key_id() -> str:
    return _get_keyring().newest_id


def configured_key_ids() -> frozenset[str]:
    return frozenset(_get_keyring().by_id)


def rotate_token(value: str) -> str:
    """``value`` re-encrypted under the newest key; plaintext is encrypted. Keeps Fernet's timestamp."""
    if not is_encrypted(value):
        return encrypt_str(value)
    kid, fernet_token = _split(value)
    keyring = _get_keyring()
    if kid not in keyring.by_id:
        raise FieldDecryptionError(f"Encrypted with key {kid}, which is not in FIELD_ENCRYPTION_KEYS.")
    try:
        rotated = keyring.multi.rotate(fernet_token.encode("ascii")).decode("ascii")
    except InvalidToken:
        raise FieldDecryptionError(f"An encrypted value under key {kid} failed authentication.") from None
    return f"{PREFIX}{keyring.newest_id}:{rotated}"


@checks.register(checks.Tags.security)
def check_field_encryption_keys(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """An error when ``FIELD_ENCRYPTION_KEYS`` cannot be used (checked at every start)."""
    try:
        _load_keyring(getattr(settings, "FIELD_ENCRYPTION_KEYS", None))
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="payments.E001")]
    return []


@checks.register(checks.Tags.security, deploy=True)
def check_field_encryption_keys_deploy(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Under ``check --deploy``: the development key (derived from SECRET_KEY) must not be in use."""
    try:
        keyring = _load_keyring(getattr(settings, "FIELD_ENCRYPTION_KEYS", None))
    except ImproperlyConfigured:
        return []  # reported by check_field_encryption_keys
    if key_id(development_key(settings.SECRET_KEY)) not in keyring.by_id:
        return []
    return [
        checks.Warning(
            "FIELD_ENCRYPTION_KEYS contains the development key derived from SECRET_KEY.",
            hint="Generate keys with `python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())'` and keep them in the secret store.",
            id="payments.W001",
        )
    ]


@checks.register(checks.Tags.security, deploy=True)
def check_field_hmac_key_deploy(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Under ``check --deploy``: the search-HMAC key must not be the one derived from SECRET_KEY."""
    if getattr(settings, "FIELD_HMAC_KEY", "") != development_hmac_key(settings.SECRET_KEY):
        return []
    return [
        checks.Warning(
            "FIELD_HMAC_KEY is the development key derived from SECRET_KEY.",
            hint="Generate one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'` "
            "and keep it in the secret store.",
            id="payments.W002",
        )
    ]
