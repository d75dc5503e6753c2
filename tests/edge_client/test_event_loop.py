"""The client's event loop: a socket closed under a pending callback is not an error."""

from __future__ import annotations

import asyncio
import logging

import pytest

from fedge.edge_client import event_loop


def test_closed_socket_callback_is_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.INFO):
            closed = RuntimeError(
                "unable to perform operation on <UVPoll closed=True 0x7f>; the handler is closed"
            )
            event_loop.report_loop_error(loop, {"message": "callback", "exception": closed})
            other = ValueError("something else")
            event_loop.report_loop_error(loop, {"message": "callback", "exception": other})
    finally:
        loop.close()
    quiet = [r for r in caplog.records if r.name == "fedge.loop"]
    assert len(quiet) == 1 and quiet[0].levelno == logging.INFO
    assert "its client reconnects" in quiet[0].getMessage()
    loud = [r for r in caplog.records if r.name == "asyncio"]
    assert len(loud) == 1 and loud[0].levelno == logging.ERROR  # the default handler's report
    assert loud[0].exc_info is not None and loud[0].exc_info[1] is other


def test_run_installs_the_handler_on_its_loop() -> None:
    async def handler_in_use() -> object:
        return asyncio.get_running_loop().get_exception_handler()

    assert event_loop.run(handler_in_use()) is event_loop.report_loop_error
