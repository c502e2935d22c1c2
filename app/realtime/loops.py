"""One object per event loop: what a daphne process shares among its sockets.

A daphne process runs one event loop; the tests run several (one per test), so
a process-wide object is kept per loop, and dropped with its loop.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def per_loop(factory: Callable[[], T]) -> Callable[[], T]:
    """A function returning the running loop's instance of `factory()`, made on first use."""
    instances: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = weakref.WeakKeyDictionary()

    def instance() -> T:
        loop = asyncio.get_running_loop()
        if loop not in instances:
            instances[loop] = factory()
        return instances[loop]

    instance.__doc__ = f"The running event loop's {getattr(factory, '__name__', 'instance')}."
    return instance
