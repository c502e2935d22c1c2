"""group_send with the metrics every caller needs (latency histogram, error count)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time

from channels.layers import get_channel_layer
from django.conf import settings

from config.redis import GROUP_SEND_TARGETS, FailoverAwareChannelLayer
from ops.metrics import GROUP_SEND_SECONDS, LAYER_ERRORS


def bounded(layer, seconds: float | None):
    """What bounds a layer call to `seconds` (None: nothing): on the Redis layer, failing fast on a
    shard that just ran out of that time (FailoverAwareChannelLayer.bounded, LAYER_SHARD_PAUSE)."""
    if seconds is None:
        return contextlib.nullcontext()
    if isinstance(layer, FailoverAwareChannelLayer):
        return layer.bounded(seconds, settings.LAYER_SHARD_PAUSE)
    return asyncio.timeout(seconds)


async def group_send(group: str, message: dict, within: float | None = None) -> int | None:
    """Send to every member of `group`; how many channels that addressed (None: the layer does not say).

    within: at most that many seconds (TimeoutError), and refused at once while a shard the send
    needs is paused (config.redis.ShardPaused, a TimeoutError): callers that answer a request use it.
    """
    layer = get_channel_layer()
    started = time.perf_counter()
    GROUP_SEND_TARGETS.set(None)
    try:
        async with bounded(layer, within):
            await layer.group_send(group, message)
    except Exception:
        LAYER_ERRORS.labels("group_send").inc()
        raise
    finally:
        GROUP_SEND_SECONDS.observe(time.perf_counter() - started)
    return GROUP_SEND_TARGETS.get()


async def round_trip():
    """A message to this process's own channel and back: the layer (and its connections) answer. Returns the layer.

    The channel shares the consumers' prefix on purpose (ops.views.check_channel_layer says why).
    """
    layer = get_channel_layer()
    channel = await layer.new_channel()
    nonce = secrets.token_hex(8)
    await layer.send(channel, {"type": "layer.ping", "nonce": nonce})
    message = await layer.receive(channel)
    if message.get("nonce") != nonce:
        raise RuntimeError("round trip returned another message")
    return layer
