"""Redis clients for the app's own use, built from the channel layer's settings.

They use channels_redis's pool factory with the same host entries, so the app
reaches the same masters (through Sentinel when configured) with the same
timeouts and retries as the layer. With several shards, a key lives on the
shard the layer's own hash picks (``client_for``).
"""

from __future__ import annotations

from channels_redis.utils import create_pool
from django.conf import settings
from redis.asyncio import Redis

from config.redis import layer_host, shard_of, shard_specs
from realtime.loops import per_loop


def configured() -> bool:
    return settings.REDIS is not None


def shard_count() -> int:
    return len(shard_specs(settings.REDIS))


def new_client(shard: int = 0) -> Redis:
    """A client of one shard the caller closes (``async with new_client() as r``): for one-off checks."""
    return Redis(connection_pool=create_pool(layer_host(shard_specs(settings.REDIS)[shard])))


def _new_clients() -> list[Redis]:
    return [new_client(shard) for shard in range(shard_count())]


# One client per shard and event loop, for long-lived callers such as consumers.
shared_clients = per_loop(_new_clients)


def client_for(key: str) -> Redis:
    """The running loop's client of the shard holding key."""
    clients = shared_clients()
    return clients[shard_of(key, len(clients))]
