"""The aggregation interface: how a job turns one round's reports into a mean delta.

A job picks one `Aggregation` when it starts (plain, central DP or secure; see
`aggregation_for_job`) and asks it for a `Collection` per training round. The round loop
calls the same methods whatever the mode; the modes differ only inside these classes, as
Flower's strategies differ behind configure/aggregate.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from fedge.edge_client.arrays import Array
from fedge.edge_client.codec import CodecSpec
from fedge.edge_client.protocol import messages as m
from fedge.server.privacy.job_privacy import JobPrivacy
from fedge.server.rounds import ParticipantReport, RoundRun

Weights = list[Array]
SendStage = Callable[[str, str, dict[str, object]], Awaitable[None]]


@dataclass(frozen=True)
class RoundContext:
    """What a round's collection needs from the job, passed in (it reaches for nothing)."""

    rnd: RoundRun
    chosen: Sequence[str]
    shapes: Sequence[tuple[int, ...]]
    codec: CodecSpec
    weights_sha: str  # the global weights devices train from this round
    prior: Weights | None  # the previous global step `pred` specs predict from
    record: Callable[[str, ParticipantReport], None]  # count and persist a device's report
    reject: Callable[[str, str, str], None]  # (device, topic, reason): log and count a refusal
    send_stage: SendStage  # a secure-aggregation request to one device


class Collection(ABC):
    """What one round collects from its selected devices.

    The ``on_*`` handlers return None when they accepted a message, else the reason it is
    refused (the device then gets it in a negative ack). A round only ever receives the
    message kinds its task asked for; the defaults refuse the others.
    """

    def __init__(self, ctx: RoundContext):
        self.ctx = ctx

    def secagg_task(self) -> m.SecAggTask | None:
        """What devices need to take part in this round's secure aggregation (None: plain)."""
        return None

    def on_update(self, device_id: str, update: m.Update, nbytes: int) -> str | None:
        """A device's plain update."""
        return "this round uses secure aggregation: plain updates are refused"

    def on_secagg(self, device_id: str, stage: m.SecAggStage, nbytes: int) -> str | None:
        """A device's secure-aggregation message."""
        return "this round does not use secure aggregation"

    def on_eval_result(self, device_id: str, result: m.EvalResult, nbytes: int) -> str | None:
        """A device's evaluation result."""
        return "this round trains: evaluation results are refused"

    @abstractmethod
    async def collect(self) -> None:
        """Wait until the round's target reported or its deadline passed."""


class TrainingCollection(Collection):
    """A training round's collection: it ends in the round's mean delta."""

    @abstractmethod
    def mean(self) -> Weights:
        """The round's mean delta (FedgeError if it cannot be formed)."""

    @property
    def within_clip(self) -> int:
        """Reports whose update was not clipped (adaptive clipping's signal)."""
        return 0


async def wait_for_target(rnd: RoundRun) -> None:
    """Until the round's target reported (reports arrive by themselves) or its deadline."""
    try:
        await asyncio.wait_for(rnd.enough.wait(), timeout=max(rnd.deadline - time.time(), 0))
    except TimeoutError:
        pass


class Aggregation(ABC):
    """How a job aggregates its training rounds; chosen once per job."""

    def __init__(self, privacy: JobPrivacy, max_example_weight: int):
        self.privacy = privacy
        # DP-FedAvg weighs every device the same (bounded sensitivity): the cap is then 1.
        self.weight_cap = privacy.weight_cap(max_example_weight)

    @abstractmethod
    def open(self, ctx: RoundContext) -> TrainingCollection:
        """The collection of one training round."""

    def dp_task(self) -> m.DPTask | None:
        """What devices need to bound (and noise) their updates."""
        return self.privacy.dp_task()
