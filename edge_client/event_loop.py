"""Run a coroutine on uvloop when it is installed, else on asyncio's own loop.

uvloop (libuv) runs the same asyncio code with far less overhead per callback, timer and
socket event. That matters where one process drives thousands of MQTT sessions (a simulator
worker) or serves a fleet (the server); a device with one session gains little, so the edge
client does not require it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("fedge.loop")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """The fastest event loop this machine has: uvloop's, or asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def report_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Loop exception handler: one INFO line for a socket closed under a pending callback.

    When the broker drops a connection, paho may still have asked the loop to watch the socket
    it just closed; uvloop then raises "the handler is closed" from that callback. Nothing is
    lost (the MQTT client sees the disconnect and reconnects), so it is not an error. Anything
    else goes to asyncio's default handler.
    """
    exc = context.get("exception")
    if isinstance(exc, RuntimeError) and "handler is closed" in str(exc):
        log.info("socket closed under a pending loop callback (%s); its client reconnects", exc)
        return
    loop.default_exception_handler(context)


async def _with_error_handler(main: Coroutine[Any, Any, T]) -> T:
    asyncio.get_running_loop().set_exception_handler(report_loop_error)
    return await main


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop of `loop_factory`, with `report_loop_error`."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(_with_error_handler(main))
