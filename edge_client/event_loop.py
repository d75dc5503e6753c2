"""Run a coroutine on uvloop when it is installed, else on asyncio's own loop.

uvloop (libuv) runs the same asyncio code with far less overhead per callback, timer and
socket event. That matters where one process drives thousands of MQTT sessions (a simulator
worker) or serves a fleet (the server); a device with one session gains little, so the edge
client does not require it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """The fastest event loop this machine has: uvloop's, or asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop of `loop_factory`."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
