"""Per-user connection limit, enforced across every daphne process on every host.

Each open socket holds a slot: a member of the sorted set
``wslimit:<endpoint>:<user id>`` whose score is the time it expires. Each
process renews its sockets' slots together every WS_STATE_REFRESH_SECONDS
(realtime/keeper.py); a process that dies stops renewing, and its slots lapse
on their own. Times come from the Redis
server's clock, so hosts with skewed clocks agree.
"""

from __future__ import annotations

import asyncio
import logging
import time

from django.conf import settings
from redis.exceptions import RedisError

from config.redis import shard_of
from ops.metrics import LAYER_ERRORS
from realtime import redis_client

log = logging.getLogger(__name__)

# KEYS[1] slot set; ARGV: member, limit, ttl seconds. Returns 1 if the slot is held.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and
   redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(ttl) + 1)
return 1
"""

# KEYS: slot sets; ARGV[1]: ttl, ARGV[1 + i]: the member of KEYS[i]. Renews existing
# slots only; returns 1 or 0 per key (held, or lost: Redis no longer had it).
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local ttl = tonumber(ARGV[1])
local held = {}
for i, key in ipairs(KEYS) do
  if redis.call('ZSCORE', key, ARGV[i + 1]) then
    redis.call('ZADD', key, now + ttl, ARGV[i + 1])
    redis.call('EXPIRE', key, math.ceil(ttl) + 1)
    held[i] = 1
  else
    held[i] = 0
  end
end
return held
"""

#: slots renewed per round trip (one script call)
RENEW_BATCH = 500

#: what names one socket's slot: endpoint, user id, member (its channel name)
Slot = tuple[str, int, str]


def _key(endpoint: str, user_id: int) -> str:
    return f"wslimit:{endpoint}:{user_id}"


def _limit(force: bool) -> int:
    """The user's limit, or none for a socket re-taking a slot Redis lost after admitting it."""
    return 2**31 if force else settings.WS_MAX_CONNECTIONS_PER_USER


class RedisSlots:
    """Slots in Redis; with a sharded layer, each user's set on the shard its key hashes to."""

    async def acquire(self, endpoint: str, user_id: int, member: str, *, force: bool = False) -> bool:
        key = _key(endpoint, user_id)
        held = await redis_client.client_for(key).eval(
            _ACQUIRE, 1, key, member, _limit(force), settings.WS_CONNECTION_SLOT_TTL
        )
        return bool(held)

    async def renew(self, held: list[Slot]) -> list[bool | None]:
        """Renew a process's open sockets' slots (a round trip per shard and RENEW_BATCH): which were
        still held, and None for those of a shard that did not answer (the others are renewed)."""
        clients = redis_client.shared_clients()
        keys = [_key(endpoint, user_id) for endpoint, user_id, _ in held]
        by_shard: dict[int, list[int]] = {}
        for index, key in enumerate(keys):
            by_shard.setdefault(shard_of(key, len(clients)), []).append(index)
        kept: list[bool | None] = [None] * len(held)

        async def renew_shard(shard: int, indexes: list[int]) -> None:
            # The shards at once: one that does not answer (its retries take seconds) delays no other.
            try:
                for start in range(0, len(indexes), RENEW_BATCH):
                    batch = indexes[start : start + RENEW_BATCH]
                    answers = await clients[shard].eval(
                        _RENEW,
                        len(batch),
                        *[keys[i] for i in batch],
                        settings.WS_CONNECTION_SLOT_TTL,
                        *[held[i][2] for i in batch],
                    )
                    for index, answer in zip(batch, answers, strict=True):
                        kept[index] = bool(answer)
            except RedisError:
                LAYER_ERRORS.labels("refresh").inc()
                log.warning("renewing the slots on shard %d failed; retrying next interval", shard, exc_info=True)

        await asyncio.gather(*(renew_shard(shard, indexes) for shard, indexes in by_shard.items()))
        return kept

    async def release(self, endpoint: str, user_id: int, member: str) -> None:
        key = _key(endpoint, user_id)
        await redis_client.client_for(key).zrem(key, member)


class LocalSlots:
    """The same rules inside one process, for the in-memory channel layer (development, tests)."""

    def __init__(self) -> None:
        self.slots: dict[str, dict[str, float]] = {}

    def _live(self, key: str) -> dict[str, float]:
        now = time.monotonic()
        held = {m: exp for m, exp in self.slots.get(key, {}).items() if exp > now}
        self.slots[key] = held
        return held

    async def acquire(self, endpoint: str, user_id: int, member: str, *, force: bool = False) -> bool:
        held = self._live(_key(endpoint, user_id))
        if member not in held and len(held) >= _limit(force):
            return False
        held[member] = time.monotonic() + settings.WS_CONNECTION_SLOT_TTL
        return True

    async def renew(self, held: list[Slot]) -> list[bool]:
        kept = []
        for endpoint, user_id, member in held:
            slots = self._live(_key(endpoint, user_id))
            kept.append(member in slots)
            if member in slots:
                slots[member] = time.monotonic() + settings.WS_CONNECTION_SLOT_TTL
        return kept

    async def release(self, endpoint: str, user_id: int, member: str) -> None:
        self._live(_key(endpoint, user_id)).pop(member, None)


_local = LocalSlots()


def slots() -> RedisSlots | LocalSlots:
    return RedisSlots() if redis_client.configured() else _local
