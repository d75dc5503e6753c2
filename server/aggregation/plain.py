"""Plain aggregation: updates decoded as they arrive into a weighted running sum (FedAvg).

Central DP is the same collection with two hooks: each decoded update is re-clipped on the
server (the sensitivity bound holds whatever a device sent), and the mean is the noised sum
over the expected number of devices.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedge.edge_client import codec
from fedge.edge_client.arrays import Array
from fedge.edge_client.protocol import messages as m
from fedge.server.aggregation.base import (
    Aggregation,
    RoundContext,
    TrainingCollection,
    Weights,
    wait_for_target,
)
from fedge.server.aggregator import StreamingMean
from fedge.server.privacy.job_privacy import CentralDP
from fedge.server.rounds import ParticipantReport


class PlainCollection(TrainingCollection):
    """Decodes each device's update into the round's streaming weighted sum."""

    def __init__(self, ctx: RoundContext, weight_cap: int):
        super().__init__(ctx)
        self.sum = StreamingMean(ctx.shapes, weight_cap)

    def on_update(self, device_id: str, update: m.Update, nbytes: int) -> str | None:
        if update.base_weights != m.base_digest(self.ctx.weights_sha):
            return "update was trained on other weights than this round's"
        delta = codec.decode_update(
            update.payload,
            self.ctx.codec,
            list(self.ctx.shapes),
            round_seed=self.ctx.rnd.round_seed,
            prior=self.ctx.prior,
        )
        self.sum.add(self.bound(delta, update), update.metrics.examples)
        metrics = update.metrics
        report = ParticipantReport(
            metrics.examples, metrics.loss, metrics.accuracy, metrics.train_time_s, nbytes
        )
        self.ctx.record(device_id, report)
        return None

    def bound(self, delta: Sequence[Array], update: m.Update) -> Sequence[Array]:
        """What of a decoded update enters the sum (all of it)."""
        return delta

    async def collect(self) -> None:
        await wait_for_target(self.ctx.rnd)

    def mean(self) -> Weights:
        return self.sum.mean()


class PlainAggregation(Aggregation):
    """FedAvg's weighted mean of the devices' decoded updates."""

    def open(self, ctx: RoundContext) -> TrainingCollection:
        return PlainCollection(ctx, self.weight_cap)


class CentralDPCollection(PlainCollection):
    """Plain collection whose updates are re-clipped and whose mean is noised."""

    def __init__(self, ctx: RoundContext, weight_cap: int, dp: CentralDP):
        super().__init__(ctx, weight_cap)
        self.dp = dp
        self._within_clip = 0

    def bound(self, delta: Sequence[Array], update: m.Update) -> Sequence[Array]:
        self._within_clip += int(bool(update.within_clip))
        return self.dp.bound(delta)

    @property
    def within_clip(self) -> int:
        return self._within_clip

    def mean(self) -> Weights:
        return self.dp.private_mean(self.sum.sums())


class CentralDPAggregation(Aggregation):
    """DP-FedAvg with a trusted server: uniform weights, re-clipping, Gaussian noise."""

    def __init__(self, dp: CentralDP, max_example_weight: int):
        super().__init__(dp, max_example_weight)
        self.dp = dp

    def open(self, ctx: RoundContext) -> TrainingCollection:
        return CentralDPCollection(ctx, self.weight_cap, self.dp)
