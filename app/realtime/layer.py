"""group_send with the metrics every caller needs (latency histogram, error count)."""

from __future__ import annotations

import secrets
import time

from channels.layers import get_channel_layer

from config.redis import GROUP_SEND_TARGETS
from ops.metrics import GROUP_SEND_SECONDS, LAYER_ERRORS


async def group_send(group: str, message: dict) -> int | None:
    """Send to every member of `group`; how many channels that addressed (None: the layer does not say)."""
    layer = get_channel_layer()
    started = time.perf_counter()
    GROUP_SEND_TARGETS.set(None)
    try:
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
