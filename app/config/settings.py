"""Settings, read from the environment. The table of variables is in app/README.md.

Development defaults are safe (DEBUG off unless asked, SQLite, in-memory
channel layer); production values have no defaults where a default would be
a secret or a guess, and start-up stops with one message listing them.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import dj_database_url

from config import redis as redis_conf
from config.env import Env

BASE_DIR = Path(__file__).resolve().parent.parent
env = Env()

DEBUG = env.bool("DJANGO_DEBUG", False)

SECRET_KEY = env.str("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if DEBUG:
        SECRET_KEY = "development-only-key-never-used-when-DJANGO_DEBUG-is-off"
    else:
        env.error("DJANGO_SECRET_KEY is required when DJANGO_DEBUG is off")
elif not DEBUG and (len(SECRET_KEY) < 32 or SECRET_KEY.startswith("django-insecure")):
    env.error("DJANGO_SECRET_KEY must be at least 32 random characters in production")
# Keys SECRET_KEY replaced, still accepted for what they signed (sessions, signed cookies,
# password reset links) while a rotation settles: see the README's Security section.
SECRET_KEY_FALLBACKS = env.list("DJANGO_SECRET_KEY_FALLBACKS", [])
if not DEBUG and any(len(key) < 32 for key in SECRET_KEY_FALLBACKS):
    env.error("DJANGO_SECRET_KEY_FALLBACKS must be keys of at least 32 random characters, comma-separated")

ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
if not ALLOWED_HOSTS:
    env.error("DJANGO_ALLOWED_HOSTS is required when DJANGO_DEBUG is off (comma-separated host names)")
elif not DEBUG and "*" in ALLOWED_HOSTS:
    env.error("DJANGO_ALLOWED_HOSTS must not contain '*' in production")
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",  # first: its runserver serves HTTP and WebSocket in development
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "realtime",
    "notifications",
    "orders",
    "live",
    "ops",
    "accounts",
]

MIDDLEWARE = [
    "ops.middleware.http_metrics",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

# --- Database -----------------------------------------------------------------
DATABASE_URL = env.str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}" if DEBUG else None)
if DATABASE_URL is None:
    env.error("DATABASE_URL is required when DJANGO_DEBUG is off (postgres://user:pass@host:5432/name)")
    DATABASE_URL = "sqlite://:memory:"
try:
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL,
            conn_max_age=env.int("DATABASE_CONN_MAX_AGE", 60, minimum=0),
            conn_health_checks=True,
        )
    }
except ValueError as exc:
    env.error(f"DATABASE_URL is not usable: {exc}")
    DATABASES = {"default": dj_database_url.parse("sqlite://:memory:")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channel layer and Redis ----------------------------------------------------
# CHANNEL_LAYER picks the backend; left unset it follows from what is configured.
_layer = env.str("CHANNEL_LAYER")
if _layer is None:
    _layer = "sentinel" if env.raw("REDIS_SENTINELS") else "redis" if env.raw("REDIS_URL") else None
if _layer is None:
    if not DEBUG:
        env.error(
            "no channel layer: set REDIS_SENTINELS (or REDIS_URL); CHANNEL_LAYER=memory only serves a single process"
        )
    _layer = "memory"

REDIS: dict | None = None
_timeouts = {
    # Above the layer's 1 s blocking read, and well below its 10 s message expiry:
    # a read stuck on a vanished host gives up in time to fetch what waits elsewhere.
    "socket_timeout": env.float("REDIS_SOCKET_TIMEOUT", 3.0, minimum=redis_conf.BLOCKING_READ_SECONDS + 1),
    "retry_seconds": env.float("REDIS_RETRY_SECONDS", 20.0, minimum=1.0),
}
if _layer == "redis":
    if not env.raw("REDIS_URL"):
        env.error("CHANNEL_LAYER=redis needs REDIS_URL (redis://[:password@]host:6379/0)")
    # Several URLs, comma-separated, shard the layer over those servers: keep their order.
    REDIS = {"mode": "url", "urls": env.list("REDIS_URL") or ["redis://localhost:6379/0"], **_timeouts}
elif _layer == "sentinel":
    try:
        _sentinels = redis_conf.parse_sentinels(env.list("REDIS_SENTINELS"))
    except ValueError as exc:
        env.error(f"REDIS_SENTINELS: {exc}")
        _sentinels = []
    if not _sentinels:
        env.error("CHANNEL_LAYER=sentinel needs REDIS_SENTINELS (host:26379,host:26379,...)")
    REDIS = {
        "mode": "sentinel",
        "sentinels": _sentinels,
        # Several names shard the layer, one master (and its replicas) each: keep their order.
        "master_names": env.list("REDIS_SENTINEL_MASTER") or ["channels"],
        "password": env.str("REDIS_PASSWORD"),
        "sentinel_password": env.str("REDIS_SENTINEL_PASSWORD"),
        "db": env.int("REDIS_DB", 0, minimum=0),
        "tls": env.bool("REDIS_TLS", False),
        **_timeouts,
    }
elif _layer != "memory":
    env.error(f"CHANNEL_LAYER={_layer!r} is not one of memory, redis, sentinel")
if REDIS is not None:
    _shards = REDIS.get("master_names") or REDIS.get("urls")
    if len(set(_shards)) != len(_shards):
        env.error(f"a channel-layer shard is listed twice: {','.join(_shards)}")

if REDIS is None:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
else:
    CHANNEL_LAYERS = {
        "default": redis_conf.channel_layer(
            REDIS,
            capacity=env.int("CHANNEL_LAYER_CAPACITY", 1500, minimum=1),
            expiry=env.int("CHANNEL_LAYER_EXPIRY", 10, minimum=1),
            # Open sockets re-join every WS_STATE_REFRESH_SECONDS, so only the
            # memberships of a crashed process age out: in a minute, not a day.
            group_expiry=env.int("CHANNEL_LAYER_GROUP_EXPIRY", 60, minimum=60),
            prefix=env.str("CHANNEL_LAYER_PREFIX", "asgi"),
        )
    }

# --- WebSocket behaviour --------------------------------------------------------
WS_MAX_CONNECTIONS_PER_USER = env.int("WS_MAX_CONNECTIONS_PER_USER", 3, minimum=1)
# A connection's slot expires this long after its last renewal, so slots of
# a crashed process free themselves.
WS_CONNECTION_SLOT_TTL = env.int("WS_CONNECTION_SLOT_TTL", 30, minimum=3)
# Every open socket renews its slot and re-asserts its group memberships this
# often: the bound on how long a socket stays deaf after Redis lost its state.
WS_STATE_REFRESH_SECONDS = env.float("WS_STATE_REFRESH_SECONDS", 5.0, minimum=0.5)
if WS_STATE_REFRESH_SECONDS * 2 >= WS_CONNECTION_SLOT_TTL:
    env.error("WS_STATE_REFRESH_SECONDS must be under half of WS_CONNECTION_SLOT_TTL (slots lapse between renewals)")
if REDIS is not None and CHANNEL_LAYERS["default"]["CONFIG"]["group_expiry"] <= 2 * WS_STATE_REFRESH_SECONDS:
    env.error("CHANNEL_LAYER_GROUP_EXPIRY must exceed twice WS_STATE_REFRESH_SECONDS (open sockets' groups lapse)")
# A stopping WebSocket process waits at most this long for its sockets to close (realtime/drain.py).
WS_DRAIN_SECONDS = env.float("WS_DRAIN_SECONDS", 5.0, minimum=0.5)
WS_MAX_MESSAGE_BYTES = env.int("WS_MAX_MESSAGE_BYTES", 64 * 1024, minimum=128)
LIVE_BATCH_INTERVAL = env.int("LIVE_BATCH_INTERVAL_MS", 100, minimum=10) / 1000
LIVE_GROUP = "live_ticks"

# --- Logins ----------------------------------------------------------------------
# An account past this many failed logins within the window is refused, password
# unchecked, until the oldest of them leaves it (accounts/throttle.py); nginx bounds
# the attempts of each address.
AUTHENTICATION_BACKENDS = ["accounts.throttle.LoginThrottle", "django.contrib.auth.backends.ModelBackend"]
LOGIN_FAILURES_PER_ACCOUNT = env.int("LOGIN_FAILURES_PER_ACCOUNT", 5, minimum=1)
LOGIN_FAILURE_WINDOW_SECONDS = env.int("LOGIN_FAILURE_WINDOW_SECONDS", 900, minimum=1)

# --- HTTP API, health, aggregation, metrics --------------------------------------
NOTIFY_API_TOKEN = env.str("NOTIFY_API_TOKEN")
if NOTIFY_API_TOKEN and len(NOTIFY_API_TOKEN) < 24:
    env.error("NOTIFY_API_TOKEN must be at least 24 characters")
# How long POST /api/notifications/ waits for the channel layer before 503 (with Retry-After).
NOTIFY_SEND_TIMEOUT = env.float("NOTIFY_SEND_TIMEOUT", 2.0, minimum=0.1)
# After a call bounded like that runs out of time on a channel layer shard, how long the process
# refuses such calls that need the shard before one tries it again (config.redis: bounded).
LAYER_SHARD_PAUSE = env.float("LAYER_SHARD_PAUSE", 1.0, minimum=0.1)
READYZ_TIMEOUT = env.float("READYZ_TIMEOUT", 2.0, minimum=0.1)
AGGREGATE_UPSTREAMS = {}
for _item in env.list("AGGREGATE_UPSTREAMS"):
    _name, _sep, _url = _item.partition("=")
    if not _sep or not _url.startswith(("http://", "https://")):
        env.error(f"AGGREGATE_UPSTREAMS entry {_item!r} is not name=http(s)://url")
    else:
        AGGREGATE_UPSTREAMS[_name.strip()] = _url.strip()
AGGREGATE_TIMEOUT = env.float("AGGREGATE_TIMEOUT", 3.0, minimum=0.1)
METRICS_ALLOWED_NETWORKS = []
for _net in env.list("METRICS_ALLOWED_NETWORKS", ["127.0.0.0/8", "::1/128"]):
    try:
        METRICS_ALLOWED_NETWORKS.append(ipaddress.ip_network(_net, strict=False))
    except ValueError:
        env.error(f"METRICS_ALLOWED_NETWORKS entry {_net!r} is not a network")

# --- Auth, sessions, proxy and TLS ------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"

# Behind nginx: it terminates TLS and sets X-Forwarded-Proto / Host.
if env.bool("DJANGO_BEHIND_PROXY", not DEBUG):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    USE_X_FORWARDED_HOST = True
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env.bool("DJANGO_SECURE_COOKIES", not DEBUG)
SECURE_HSTS_SECONDS = env.int("DJANGO_HSTS_SECONDS", 0, minimum=0)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = env.str("STATIC_ROOT", str(BASE_DIR / "staticfiles"))

# --- Logging: JSON lines on stdout ------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
    env.error(f"LOG_LEVEL={LOG_LEVEL!r} is not a logging level")
    LOG_LEVEL = "INFO"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "config.logging.JsonFormatter"},
        "text": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "stdout": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
            "formatter": env.str("LOG_FORMAT", "text" if DEBUG else "json"),
        }
    },
    "root": {"handlers": ["stdout"], "level": LOG_LEVEL},
}
if LOGGING["handlers"]["stdout"]["formatter"] not in LOGGING["formatters"]:
    env.error("LOG_FORMAT must be json or text")
    LOGGING["handlers"]["stdout"]["formatter"] = "json"

env.finish()
