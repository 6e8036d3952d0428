"""LeadCenter settings, read from the environment (see README "Configuration").

Every variable has a safe default for a first run on a laptop: SQLite, DEBUG on, the ORM broker.
Production sets DEBUG=false, SECRET_KEY, ALLOWED_HOSTS and DATABASE_URL.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from leadcenter.env import env_bool, env_duration, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", True)

# A fixed development key is only acceptable while DEBUG is on; the system check
# leadcenter.W001 and check --deploy both refuse it in production.
DEV_SECRET_KEY = "dev-insecure-leadcenter-key-change-me-for-any-real-use-0123456789"  # noqa: S105
SECRET_KEY = env_str("SECRET_KEY", DEV_SECRET_KEY if DEBUG else "")
if not SECRET_KEY:
    raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
SECRET_KEY_FALLBACKS = env_list("SECRET_KEY_FALLBACKS", [])

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

LEADCENTER_BASE_URL = env_str("LEADCENTER_BASE_URL", "http://127.0.0.1:8000").rstrip("/")
LEADCENTER_SOFT_BOUNCE_MAX_AGE = env_duration("LEADCENTER_SOFT_BOUNCE_MAX_AGE", "3d")
LEADCENTER_UNSUBSCRIBE_MAILTO = env_str("LEADCENTER_UNSUBSCRIBE_MAILTO", "")
# Sending: messages claimed per batch; first retry delay of a soft bounce (doubling each time,
# at most six hours); consecutive failures of our own side before an account is switched off;
# how long a claimed message may stay unanswered before it is reported as in doubt.
LEADCENTER_BATCH_SIZE = env_int("LEADCENTER_BATCH_SIZE", 100, minimum=1)
LEADCENTER_RETRY_BASE = env_duration("LEADCENTER_RETRY_BASE", "5m")
LEADCENTER_ACCOUNT_MAX_FAILURES = env_int("LEADCENTER_ACCOUNT_MAX_FAILURES", 5, minimum=1)
LEADCENTER_IN_DOUBT_AFTER = env_duration("LEADCENTER_IN_DOUBT_AFTER", "15m")
# Admin log-in throttling (leadcenter.throttle): failed attempts allowed per username and
# address, and per address whatever the username, within the lock-out window.
LEADCENTER_LOGIN_FAILURES = env_int("LEADCENTER_LOGIN_FAILURES", 5, minimum=1)
LEADCENTER_LOGIN_IP_FAILURES = env_int("LEADCENTER_LOGIN_IP_FAILURES", 50, minimum=1)
LEADCENTER_LOGIN_LOCKOUT = env_duration("LEADCENTER_LOGIN_LOCKOUT", "15m")
# Domain of our Message-ID headers; defaults to the host of LEADCENTER_BASE_URL.
LEADCENTER_MESSAGE_ID_DOMAIN = env_str(
    "LEADCENTER_MESSAGE_ID_DOMAIN", urlsplit(LEADCENTER_BASE_URL).hostname or "localhost"
)

INSTALLED_APPS = [
    "leadcenter.apps.LeadCenterAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_filters",
    "import_export",
    "django_q",
    "anymail",
    "leadcenter",
    "contacts",
    "campaigns",
    "tracking",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

if not DEBUG:
    # Serves the admin's static files in production; with DEBUG on, runserver does.
    MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")

ROOT_URLCONF = "leadcenter.urls"

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

WSGI_APPLICATION = "leadcenter.wsgi.application"

DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
DATABASES = {
    "default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("CONN_MAX_AGE", 60))
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and env_bool(
    "DATABASE_PREPARED_STATEMENTS", True
):
    # The sender's per-batch statements are prepared on their connection
    # (leadcenter.database.prepared_cursor); Django's own cursors bind on the client and never
    # prepare. Behind a pooler that cannot keep prepared statements (PgBouncer in transaction
    # mode before 1.21), set DATABASE_PREPARED_STATEMENTS=false.
    DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = 5
elif DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Workers and the web server share the file: wait for locks instead of failing, and let
    # readers go on while one writer writes.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not memory, so the tests' worker processes share the test database; one per
    # test session, so two sessions on one machine never share it.
    DATABASES["default"]["TEST"] = {
        "NAME": str(BASE_DIR / "var" / f"test-db-{os.getpid()}.sqlite3")
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(BASE_DIR / "media")))

# Production hardening: on whenever DEBUG is off (check --deploy is clean then).
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if env_bool("SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# /healthz is probed over plain HTTP by load balancers.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]

# django-q2: the ORM broker by default; Redis when REDIS_URL is set. retry must exceed timeout
# or a slow task is handed to a second worker while the first still runs it.
REDIS_URL = env_str("REDIS_URL", "")
Q_TIMEOUT = env_int("Q_TIMEOUT", 300, minimum=10)
Q_CLUSTER = {
    "name": "leadcenter",
    "workers": env_int("Q_WORKERS", 2, minimum=1),
    "timeout": Q_TIMEOUT,
    "retry": Q_TIMEOUT + env_int("Q_RETRY_MARGIN", 60, minimum=1),
    "max_attempts": 1,
    "queue_limit": 50,
    # One task fetched at a time: with the ORM broker a cluster otherwise takes a bulk of
    # tasks while its workers are busy, and their retry clock runs from the fetch.
    "bulk": 1,
    # django-q2 pops this key when Q_CLUSTER_NAME is set; without it that would crash.
    "ALT_CLUSTERS": {},
    "catch_up": False,
    "label": "Task queue",
}
# Opens and clicks go through a Redis list when Redis is there, so the pixel answers at once
# ("inline" applies them in the request instead).
LEADCENTER_TRACKING_BUFFER = env_str(
    "LEADCENTER_TRACKING_BUFFER", "redis" if REDIS_URL else "inline"
)
if LEADCENTER_TRACKING_BUFFER not in ("redis", "inline"):
    raise ImproperlyConfigured("LEADCENTER_TRACKING_BUFFER must be redis or inline")
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "leadcenter@localhost")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

ANYMAIL = {
    "WEBHOOK_SECRET": env_str("ANYMAIL_WEBHOOK_SECRET", ""),
}
# Each ESP's API key and webhook signing key, by anymail's own setting names, when set.
for _name in (
    "BREVO_API_KEY",
    "MAILGUN_API_KEY",
    "MAILGUN_WEBHOOK_SIGNING_KEY",
    "MAILJET_API_KEY",
    "MAILJET_SECRET_KEY",
    "POSTAL_API_KEY",
    "POSTAL_WEBHOOK_KEY",
    "POSTMARK_SERVER_TOKEN",
    "RESEND_API_KEY",
    "RESEND_SIGNING_SECRET",
    "SENDGRID_API_KEY",
    "SPARKPOST_API_KEY",
):
    if env_str(_name):
        ANYMAIL[_name] = env_str(_name)
# Apply ESP webhook events in the request instead of a django-q2 task (tests, small installs).
LEADCENTER_WEBHOOKS_SYNC = env_bool("LEADCENTER_WEBHOOKS_SYNC", False)
# Contact files with more data rows than this are imported by a worker (the admin shows progress).
LEADCENTER_IMPORT_BACKGROUND_ROWS = env_int("LEADCENTER_IMPORT_BACKGROUND_ROWS", 5000, minimum=1)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # aiosmtpd logs every SMTP command of the simulated internet at INFO.
        "mail.log": {"level": "WARNING"},
    },
}
