"""The stages of a secure-aggregation round: one definition that device and server both read.

A round runs four stages. The device's training task opens the first (the device advertises
its keys once its masked input can be ready); the server opens each later one with a request
to every device still in the round. Each stage has the device's reply message, and each
request its own message, named here once for the fedge envelope (``SecAggStage.stage``) and
for the SecAgg messages inside it (their ``t`` tag).
"""

from __future__ import annotations

from enum import StrEnum

from fedge.edge_client.errors import SecAggError


class Stage(StrEnum):
    """A stage, named as a device's reply in it travels (``SecAggStage.stage``)."""

    ADVERTISE = "advertise"
    SHARE = "share"
    MASKED = "masked"
    UNMASK = "unmask"

    @property
    def next(self) -> Stage | None:
        """The stage after this one (None after Unmask)."""
        order = list(Stage)
        index = order.index(self)
        return order[index + 1] if index + 1 < len(order) else None

    @property
    def request(self) -> Request | None:
        """The server's request that opens this stage (None: the task opens Advertise)."""
        return _REQUEST_OF.get(self)


class Request(StrEnum):
    """A server -> device request, named as it travels (``SecAggStage.stage``)."""

    ROSTER = "roster"
    MASKED_REQUEST = "masked_request"
    UNMASK_REQUEST = "unmask_request"

    @property
    def opens(self) -> Stage:
        """The stage whose reply answers this request."""
        return _STAGE_OF[self]


_REQUEST_OF = {
    Stage.SHARE: Request.ROSTER,
    Stage.MASKED: Request.MASKED_REQUEST,
    Stage.UNMASK: Request.UNMASK_REQUEST,
}
_STAGE_OF = {request: stage for stage, request in _REQUEST_OF.items()}


def reply_stage(name: str) -> Stage:
    """The stage of a device's reply named ``name``; SecAggError if there is none."""
    try:
        return Stage(name)
    except ValueError:
        raise SecAggError(f"unknown secure-aggregation stage {name!r}") from None


def request_named(name: str) -> Request:
    """The server request named ``name``; SecAggError if there is none."""
    try:
        return Request(name)
    except ValueError:
        raise SecAggError(f"unexpected secure-aggregation request {name!r}") from None
