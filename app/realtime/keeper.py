"""Each process re-asserts its open sockets' Redis state together, once per interval.

Redis may lose what a socket holds there, its connection slot and its group
memberships (a master restarted empty, a failover to a replica that had not
received them yet); an open socket then heals within WS_STATE_REFRESH_SECONDS
instead of going deaf. A lost slot is counted (WS_STATE_LOST): it means Redis
lost state, which the WebSocketStateLost alert reports.

One task per process does it for every socket: one script call renews up to
limits.RENEW_BATCH slots, and one ZADD re-adds every member of a group, where
a task per socket made three round trips per socket and interval and, with a
thousand idle sockets, more concurrent commands than the layer's connection
pool holds.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import TYPE_CHECKING

from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import RedisError

from ops.metrics import LAYER_ERRORS, WS_STATE_LOST
from realtime import limits
from realtime.loops import per_loop

if TYPE_CHECKING:
    from realtime.consumers import AppConsumer

log = logging.getLogger(__name__)

#: channels re-added to a group per ZADD
GROUP_BATCH = 1000


class StateKeeper:
    """The sockets of one event loop whose slot or groups live in Redis (and the live feed's membership)."""

    def __init__(self) -> None:
        self.consumers: set[AppConsumer] = set()
        self.task: asyncio.Task | None = None

    def add(self, consumer: AppConsumer) -> None:
        self.consumers.add(consumer)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    def discard(self, consumer: AppConsumer) -> None:
        self.consumers.discard(consumer)

    async def _run(self) -> None:
        # Ends when the process holds no socket; the next one starts it again.
        while self.consumers:
            await asyncio.sleep(settings.WS_STATE_REFRESH_SECONDS)
            try:
                await self.renew()
            except Exception:
                LAYER_ERRORS.labels("refresh").inc()
                log.warning("socket state refresh failed; retrying next interval", exc_info=True)

    async def renew(self) -> None:
        """Renew every held slot (re-taking lost ones) and re-add every membership."""
        consumers = [c for c in self.consumers if not c.released]
        held = [c for c in consumers if c.slot_held]
        if held:
            kept = await limits.slots().renew([(c.endpoint, c.user.pk, c.channel_name) for c in held])
            for consumer, still_held in zip(held, kept, strict=True):
                # A socket released meanwhile gave its slot back itself (slot_held is cleared first);
                # None: its shard did not answer, the next interval tries again.
                if still_held is None or still_held or not consumer.slot_held or consumer.released:
                    continue
                WS_STATE_LOST.labels(consumer.endpoint).inc()
                # Take it again, even past the limit, rather than drop a socket
                # that was legitimately admitted.
                await limits.slots().acquire(consumer.endpoint, consumer.user.pk, consumer.channel_name, force=True)
        # Still kept after the slot round trip: one that left meanwhile is not re-added.
        kept = [c for c in consumers if c in self.consumers and not c.released]
        members: dict[str, list[str]] = defaultdict(list)
        for consumer in kept:
            for group in consumer.memberships:
                members[group].append(consumer.channel_name)
        if not members:
            return
        layer = get_channel_layer()
        by_shard: dict[int, list[tuple[str, list[str]]]] = defaultdict(list)
        for group, channels in members.items():
            # The in-memory layer (development, tests) has one "shard".
            shard = layer.consistent_hash(group) if hasattr(layer, "consistent_hash") else 0
            by_shard[shard].append((group, channels))
        await asyncio.gather(*(self._readd(layer, groups) for groups in by_shard.values()))
        # One that left while its groups were being re-added may have taken itself out before the
        # re-add landed (it is marked released before its group_discard is sent): out again, or it
        # would stay a member, sent to and never read, until the layer's group expiry.
        for consumer in kept:
            if consumer.released:
                await consumer.leave_groups()

    @staticmethod
    async def _readd(layer, groups: list[tuple[str, list[str]]]) -> None:
        """Re-add one shard's groups, the shards at once: with one shard down, the groups on the
        others are still renewed (they would lapse after the layer's group expiry, deafening sockets
        the failure never touched). Its first failure leaves that shard's rest to the next interval."""
        try:
            for group, channels in groups:
                for start in range(0, len(channels), GROUP_BATCH):
                    batch = channels[start : start + GROUP_BATCH]
                    if hasattr(layer, "group_add_many"):
                        await layer.group_add_many(group, batch)
                    else:  # the in-memory layer (development, tests)
                        for channel in batch:
                            await layer.group_add(group, channel)
        except RedisError:
            LAYER_ERRORS.labels("refresh").inc()
            log.warning("re-adding the groups of a shard failed; retrying next interval", exc_info=True)


# This event loop's keeper: one per daphne process.
keeper = per_loop(StateKeeper)
