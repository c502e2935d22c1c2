"""Redis clients for the app's own use, built from the channel layer's settings.

They use channels_redis's pool factory with the same host entry, so the app
reaches the same master (through Sentinel when configured) with the same
timeouts and retries as the layer.
"""

from __future__ import annotations

from channels_redis.utils import create_pool
from django.conf import settings
from redis.asyncio import Redis

from config.redis import layer_host
from realtime.loops import per_loop


def configured() -> bool:
    return settings.REDIS is not None


def new_client() -> Redis:
    """A client the caller closes (``async with new_client() as r``): for one-off checks."""
    return Redis(connection_pool=create_pool(layer_host(settings.REDIS)))


# One client per event loop, for long-lived callers such as consumers.
shared_client = per_loop(new_client)
