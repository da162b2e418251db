"""Production: everything from the environment, secure by default."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F403
from .base import env

SECRET_KEY = env.str("SECRET_KEY")  # no default: refuse to start without one
# Personal-data encryption keys come from the secret store, never derived from SECRET_KEY
# (docs/security.md: generating, rotating and retiring them).
FIELD_ENCRYPTION_KEYS = env.list("FIELD_ENCRYPTION_KEYS")  # no default: refuse to start without them
if not FIELD_ENCRYPTION_KEYS:
    raise ImproperlyConfigured("FIELD_ENCRYPTION_KEYS is empty: set one or more Fernet keys, newest first.")
# The payee-account search HMAC key (docs/security.md §2): from the secret store, never derived.
FIELD_HMAC_KEY = env.str("FIELD_HMAC_KEY")  # no default: refuse to start without it
if len(FIELD_HMAC_KEY) < 32:
    raise ImproperlyConfigured("FIELD_HMAC_KEY must be at least 32 characters of random data.")
DEBUG = False
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS")

# https://docs.djangoproject.com/en/5.2/howto/deployment/checklist/
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

# Fault-injection hooks exist for the test drills only; a production process with one set refuses to start.
if env.float("PAYMENTS_FAULT_PAUSE_AFTER_GATEWAY_SECONDS", default=0.0) > 0:
    raise ImproperlyConfigured("PAYMENTS_FAULT_PAUSE_AFTER_GATEWAY_SECONDS is a test-only fault hook.")
