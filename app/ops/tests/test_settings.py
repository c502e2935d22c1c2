"""Start-up with missing or unsafe settings stops with one clear message, never a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2]
GOOD = {
    "DJANGO_SECRET_KEY": "k" * 50,
    "DJANGO_ALLOWED_HOSTS": "example.com",
    "DATABASE_URL": "postgres://app:secret@db.internal:5432/app",
    "REDIS_SENTINELS": "10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26379",
    "REDIS_PASSWORD": "p",
    "REDIS_SENTINEL_PASSWORD": "s",
}
PRINT_CONFIG = (
    "import django, json; django.setup(); from django.conf import settings as s; "
    "layer = s.CHANNEL_LAYERS['default']; h = layer.get('CONFIG', {}).get('hosts', [{}]); "
    "print(json.dumps({'db': s.DATABASES['default']['ENGINE'], 'backend': layer['BACKEND'], "
    "'hosts': len(h), 'sentinels': h[0].get('sentinels'), 'master': h[0].get('master_name'), "
    "'masters': [x.get('master_name') for x in h], "
    "'socket_timeout': h[0].get('socket_timeout'), "
    "'conn': getattr(h[0].get('connection_class'), '__name__', None), "
    "'sentinel_password': h[0].get('sentinel_kwargs', {}).get('password'), 'debug': s.DEBUG}))"
)


def start(env: dict) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "REDIS_", "DATABASE_"))}
    clean.pop("CHANNEL_LAYER", None)
    return subprocess.run(
        [sys.executable, "-c", PRINT_CONFIG],
        cwd=APP,
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, "DJANGO_SETTINGS_MODULE": "config.settings", **env},
    )


def test_production_settings_build_one_sentinel_host_entry():
    result = start(GOOD)
    assert result.returncode == 0, result.stderr
    import json

    config = json.loads(result.stdout)
    assert config == {
        "db": "django.db.backends.postgresql",
        "backend": "config.redis.FailoverAwareChannelLayer",
        "hosts": 1,
        "sentinels": [["10.0.0.1", 26379], ["10.0.0.2", 26379], ["10.0.0.3", 26379]],
        "master": "channels",
        "masters": ["channels"],
        "socket_timeout": 3.0,
        "conn": "FailoverAwareConnection",
        "sentinel_password": "s",
        "debug": False,
    }


def test_several_sentinel_masters_shard_the_layer_in_their_order():
    result = start({**GOOD, "REDIS_SENTINEL_MASTER": "channels,channels-1"})
    assert result.returncode == 0, result.stderr
    import json

    config = json.loads(result.stdout)
    assert config["hosts"] == 2
    assert config["masters"] == ["channels", "channels-1"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"DJANGO_SECRET_KEY": None}, "DJANGO_SECRET_KEY is required"),
        ({"DJANGO_SECRET_KEY": "short"}, "at least 32 random characters"),
        ({"DJANGO_ALLOWED_HOSTS": None}, "DJANGO_ALLOWED_HOSTS is required"),
        ({"DJANGO_ALLOWED_HOSTS": "*"}, "must not contain '*'"),
        ({"DATABASE_URL": None}, "DATABASE_URL is required"),
        ({"DATABASE_URL": "nosuchdb://x"}, "DATABASE_URL is not usable"),
        ({"REDIS_SENTINELS": None}, "no channel layer"),
        ({"REDIS_SENTINELS": "10.0.0.1"}, "is not host:port"),
        ({"REDIS_SOCKET_TIMEOUT": "1"}, "REDIS_SOCKET_TIMEOUT=1.0 must be at least 2"),
        ({"DJANGO_DEBUG": "maybe"}, "is not a boolean"),
        ({"WS_MAX_CONNECTIONS_PER_USER": "0"}, "must be at least 1"),
        ({"METRICS_ALLOWED_NETWORKS": "not-a-net"}, "is not a network"),
        ({"CHANNEL_LAYER": "kafka"}, "is not one of memory, redis, sentinel"),
        ({"REDIS_SENTINEL_MASTER": "channels,channels-1,channels"}, "shard is listed twice: channels,channels-1"),
        ({"NOTIFY_API_TOKEN": "short"}, "NOTIFY_API_TOKEN must be at least 24"),
        (
            {"CHANNEL_LAYER_GROUP_EXPIRY": "60", "WS_STATE_REFRESH_SECONDS": "30", "WS_CONNECTION_SLOT_TTL": "90"},
            "must exceed twice WS_STATE_REFRESH_SECONDS",
        ),
    ],
)
def test_bad_settings_stop_startup_with_one_message(change, expected):
    env = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    result = start(env)
    assert result.returncode == 78
    assert expected in result.stderr
    assert result.stderr.startswith("Configuration error: the application cannot start.")
    assert "Traceback" not in result.stderr


def test_every_problem_is_listed_at_once():
    result = start({})
    assert result.returncode == 78
    for name in ("DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS", "DATABASE_URL", "REDIS_SENTINELS"):
        assert name in result.stderr


def test_debug_runs_with_development_defaults():
    result = start({"DJANGO_DEBUG": "1"})
    assert result.returncode == 0, result.stderr
    import json

    config = json.loads(result.stdout)
    assert config["db"] == "django.db.backends.sqlite3"
    assert config["backend"] == "channels.layers.InMemoryChannelLayer"
    assert config["debug"] is True
