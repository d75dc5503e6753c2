"""Run a coroutine on uvloop when it is installed (else asyncio's loop), or until a signal."""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("fedge.loop")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """The fastest event loop this machine has: uvloop's, or asyncio's default.

    uvloop (libuv) runs the same asyncio code with far less overhead per callback, timer and
    socket event. That matters where one process drives thousands of MQTT sessions (a simulator
    worker) or serves a fleet (the server); a device with one session gains little, so the edge
    client does not require it.
    """
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


def run_until_signal(main: Callable[[asyncio.Event], object]) -> object:
    """Run ``main(stop)`` with `run`; SIGINT/SIGTERM set ``stop`` so it can shut down cleanly.

    ``main`` must return an awaitable (an ``async def`` taking the stop event). Typed loosely
    so it fits the runner argument of ``run_device``. Returns what the awaitable returns.
    """

    async def runner() -> object:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        pending = main(stop)
        if not inspect.isawaitable(pending):
            raise TypeError(f"{main!r} returned {pending!r}, not an awaitable")
        return await pending

    return run(runner())
