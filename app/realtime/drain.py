"""Draining a WebSocket process before it stops: every socket is told to go and reconnects elsewhere.

Daphne stops on SIGTERM at once: its sockets are cut without a close frame and
their clients see 1006, indistinguishable from a crash. The daphne unit's
ExecStop therefore sends SIGUSR1 first, and the process:

1. stops admitting sockets: a handshake is accepted and closed at once with
   GOING_AWAY, and /readyz answers 503;
2. closes every open socket with GOING_AWAY (4001, documented in
   realtime/closecodes.py); clients reconnect after a short jittered delay,
   through nginx, to another instance;
3. once every consumer has given back its state (slot, groups, gauge), or
   after WS_DRAIN_SECONDS, sends itself SIGTERM and stops as usual.

A deploy, a host removal and a plain ``systemctl stop`` all go this way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
import weakref

from django.conf import settings

from ops.metrics import WS_DRAINED
from realtime import closecodes

log = logging.getLogger(__name__)

_open: weakref.WeakSet = weakref.WeakSet()
_loop: asyncio.AbstractEventLoop | None = None
_state: dict = {"draining": False, "task": None, "emptied": None}


def draining() -> bool:
    return _state["draining"]


def track(consumer) -> None:
    """An accepted socket: closed with GOING_AWAY when the process drains."""
    global _loop
    _loop = asyncio.get_running_loop()
    _open.add(consumer)


def untrack(consumer) -> None:
    _open.discard(consumer)
    if not _open and _state["emptied"]:
        _state["emptied"].set()


def open_sockets() -> int:
    return len(_open)


async def drain(stop=None) -> int:
    """Close every socket with GOING_AWAY, wait for their cleanup, then stop the process.

    Returns how many sockets were closed; `stop` (tests) replaces the SIGTERM.
    """
    if _state["draining"]:
        return 0
    _state["draining"] = True
    _state["emptied"] = emptied = asyncio.Event()
    consumers = list(_open)
    started = time.monotonic()
    log.warning("draining: closing %d sockets with %d", len(consumers), closecodes.GOING_AWAY)
    results = await asyncio.gather(*(c.go_away() for c in consumers), return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            log.warning("closing a socket while draining failed: %r", result)
    WS_DRAINED.inc(len(consumers))
    if _open:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(emptied.wait(), settings.WS_DRAIN_SECONDS)
    log.warning(
        "drained in %.2f s; %d sockets still held state; stopping",
        time.monotonic() - started,
        len(_open),
    )
    (stop or _terminate)()
    return len(consumers)


def _terminate() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def _on_signal(signum, frame) -> None:
    # Runs in the main thread, which runs the server's event loop.
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = _loop
    if loop is None or loop.is_closed():
        # No loop serves sockets yet: nothing to drain.
        _terminate()
        return

    def start() -> None:
        _state["task"] = _state["task"] or loop.create_task(drain())

    loop.call_soon_threadsafe(start)


def install() -> None:
    """SIGUSR1 drains this process (the server's entry point calls this once)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGUSR1, _on_signal)
