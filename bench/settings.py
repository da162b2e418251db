"""Settings for the processes the benchmark starts: production, plus two references.

- ``/bench/noop`` (GET and POST): a DRF view with the API's authentication,
  permission and throttle classes and nothing else, served by the same gunicorn
  as the API (``bench.urls``).
- ``bench.noop``: a Celery task that does nothing (``bench.tasks``), run by the
  same workers as the execution tasks.

Everything else is ``config.settings.production``, configured through the
environment by the harness (``bench.stack``).
"""

from __future__ import annotations

from config.settings.production import *  # noqa: F403
from config.settings.production import INSTALLED_APPS, env

ROOT_URLCONF = "bench.urls"
INSTALLED_APPS = [*INSTALLED_APPS, "bench"]

# Production's cache without REDIS_URL (file-based), in a folder of this run, so throttle
# counters never mix with another server's on the same machine.
if not env.str("REDIS_URL", default=""):
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": env.str("BENCH_CACHE_DIR"),
        }
    }
