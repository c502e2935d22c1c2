"""The test suite's settings: the production module itself, fed a test environment.

Tests thus run with DJANGO_DEBUG off and exercise the same validation as a
deployment; only values a test cannot do without are defaulted here.
"""

import os

for _name, _value in {
    "DJANGO_SECRET_KEY": "test-only-secret-key-0123456789abcdefghijklmnopqrstuvwxyz",
    "DJANGO_ALLOWED_HOSTS": "testserver,localhost,127.0.0.1",
    "DATABASE_URL": "sqlite:///:memory:",
    "CHANNEL_LAYER": "memory",
    "DJANGO_SECURE_COOKIES": "0",
    "NOTIFY_API_TOKEN": "test-notify-token-0123456789abcdef",
    "LOG_FORMAT": "text",
    "LOG_LEVEL": "WARNING",
}.items():
    os.environ.setdefault(_name, _value)

from config.settings import *  # noqa: E402,F403
