"""Settings for the test suite: the real PostgreSQL and RabbitMQ by default."""

from __future__ import annotations

from .base import *  # noqa: F403
from .base import REST_FRAMEWORK, env

# Fast hashing: tests create many users and tokens.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
# Tests set their own throttle rates where they test throttling.
REST_FRAMEWORK = {
    **REST_FRAMEWORK,
    "DEFAULT_THROTTLE_RATES": {
        "user": env.str("THROTTLE_USER_RATE", default="100000/min"),
        "anon": env.str("THROTTLE_ANON_RATE", default="100000/min"),
        "ip": env.str("THROTTLE_IP_RATE", default="100000/min"),
    },
}
