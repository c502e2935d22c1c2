"""Sync code (views, signals, management commands) reaching the channel layer through one event loop per process.

``async_to_sync`` called where no event loop runs (a gunicorn worker's thread)
makes a new loop for every call, and channels_redis keeps its connection pools
per loop: every ``POST /api/notifications/`` opened, and closed again, a
connection to a Sentinel and one to the Redis master. Here each process keeps
one loop in a daemon thread; calls from any thread run on it, and the layer's
pools (and the Sentinel clients') live as long as the process.

The in-memory layer (development, tests without Redis) keeps its queues on the
caller's loop, so it goes through ``async_to_sync`` as before.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer

T = TypeVar("T")
_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_owner_pid: int | None = None


def _process_loop() -> asyncio.AbstractEventLoop:
    """This process's loop, started on first use (and again in a forked child: threads do not survive a fork)."""
    global _loop, _owner_pid
    with _lock:
        if _loop is None or _owner_pid != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="channel-layer-loop", daemon=True).start()
            _loop, _owner_pid = loop, os.getpid()
        return _loop


def call(function: Callable[..., Awaitable[T]], *args, **kwargs) -> T:
    """Run `function(*args, **kwargs)` to completion from sync code; its exceptions are raised here.

    The coroutine bounds its own time (asyncio.timeout); the caller's thread waits for it.
    """
    if isinstance(get_channel_layer(), InMemoryChannelLayer):
        return async_to_sync(function)(*args, **kwargs)
    return asyncio.run_coroutine_threadsafe(function(*args, **kwargs), _process_loop()).result()
