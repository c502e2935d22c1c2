"""group_send with the metrics every caller needs (latency histogram, error count)."""

from __future__ import annotations

import time

from channels.layers import get_channel_layer

from ops.metrics import GROUP_SEND_SECONDS, LAYER_ERRORS


async def group_send(group: str, message: dict) -> None:
    layer = get_channel_layer()
    started = time.perf_counter()
    try:
        await layer.group_send(group, message)
    except Exception:
        LAYER_ERRORS.labels("group_send").inc()
        raise
    finally:
        GROUP_SEND_SECONDS.observe(time.perf_counter() - started)
