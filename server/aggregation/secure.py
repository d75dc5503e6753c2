"""Secure aggregation: SecAgg+ stages over MQTT, and decoding of the exact sum they reveal.

Devices train first; a device's AdvertiseKeys message says "my masked input will be ready".
Then ShareKeys, MaskedInput and Unmask run, each with its own deadline, and the server learns
only the sum of the survivors' ring vectors: the quantized, weight-scaled updates plus, in the
last element, the sum of their weights. With distributed DP the vectors are the devices'
noisy, rotated integer updates (every weight 1), and the sum is decoded by the DP controller.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedge.edge_client import codec
from fedge.edge_client.errors import ProtocolError, SecAggError
from fedge.edge_client.privacy import check_wraparound
from fedge.edge_client.protocol import messages as m
from fedge.edge_client.secagg import GraphKind, SecAggConfig, decode_message
from fedge.edge_client.secagg.stages import Stage
from fedge.server.aggregation.base import (
    Aggregation,
    RoundContext,
    SendStage,
    TrainingCollection,
    Weights,
)
from fedge.server.job_settings import SecureSettings
from fedge.server.privacy.job_privacy import DistributedDP, NoPrivacy
from fedge.server.rounds import ParticipantReport
from fedge.server.secagg import SecAggServer

log = logging.getLogger("fedge.server.secagg")


class SecureRound:
    """Runs the four stages for the selected devices and returns the decoded weighted sum."""

    def __init__(
        self,
        *,
        fleet: str,
        round_id: str,
        round_seed: int,
        selected: Sequence[str],
        shapes: Sequence[tuple[int, ...]],
        codec_spec: codec.CodecSpec,
        settings: SecureSettings,
        max_weight: int,
        enrolment_key: Any = None,
        dp: DistributedDP | None = None,
    ):
        self.settings = settings
        self.round_seed = round_seed
        self.shapes = list(shapes)
        self.dp = dp
        self.max_weight = 1 if dp is not None else max_weight
        self.selected = len(selected)
        self.ring: codec.RingCodec | None = None
        if dp is None:
            self.ring = codec.RingCodec(
                codec_spec, self.shapes, settings.clip, settings.bits, self.selected
            )
            length = self.ring.length
        else:
            check_wraparound(dp.params, self.selected)
            length = dp.params.padded_dim
        self.config = SecAggConfig(
            fleet=fleet,
            dimension=length + 1,
            dropout_rate=settings.dropout_rate,
            corrupt_fraction=settings.corrupt_fraction,
            # distributed DP: a released sum must carry the noise the accountant assumes
            min_clients=max(settings.min_clients, dp.min_clients if dp else 0),
            graph=GraphKind(settings.graph),
        )
        self.round_id = round_id
        self.server = SecAggServer(
            round_id, self.config, list(selected), enrolment_public_key=enrolment_key
        )
        self.progress = asyncio.Event()
        self.stage_log: list[tuple[str, float, int]] = []  # (stage, seconds, devices)

    def task_settings(self) -> m.SecAggTask:
        """What every selected device needs to take part."""
        return m.SecAggTask(
            round_id=self.round_id,
            config=self.config,
            clip=self.settings.clip,
            bits=self.settings.bits,
            n_max=self.selected,
            max_weight=self.max_weight,
            stage_timeout_s=self.settings.stage_timeout_s,
        )

    def receive(self, device_id: str, data: dict[str, Any]) -> None:
        """One stage message from a device (SecAggError: refused, nothing changed)."""
        self.server.receive(device_id, decode_message(data))
        self.progress.set()

    async def run(self, send: SendStage, advertise_deadline: float, target: int) -> set[str]:
        """All stages; returns the survivors. SecAggError when the round must abort."""
        stage = Stage.ADVERTISE
        deadline = advertise_deadline
        while True:
            t0 = time.time()
            await self._wait(deadline, stage, target)
            requests = self.server.close_stage()  # raises SecAggError below the threshold
            self.stage_log.append((stage.value, time.time() - t0, len(requests)))
            following = stage.next
            if following is None:
                return set(self.server.survivors)
            request = following.request
            assert request is not None  # every stage after the first is opened by a request
            await asyncio.gather(
                *(send(d, request.value, req.to_wire()) for d, req in requests.items())
            )
            stage = following
            deadline = time.time() + self.settings.stage_timeout_s

    async def _wait(self, deadline: float, stage: Stage, target: int) -> None:
        while time.time() < deadline:
            pending = self.server.pending()
            if not pending:
                return
            if stage is Stage.ADVERTISE and self.selected - len(pending) >= target:
                return  # enough devices trained: the stragglers are over-selection slack
            self.progress.clear()
            try:
                await asyncio.wait_for(self.progress.wait(), timeout=max(deadline - time.time(), 0))
            except TimeoutError:
                return

    def decode_mean(self) -> tuple[Weights, float]:
        """(mean delta, total weight) from the ring sum of the survivors.

        Without DP: the example-weighted mean of the decoded sum. With distributed DP: the
        noisy sum over the expected number of devices (DP-FedAvg's fixed denominator).
        """
        ring_sum = self.server.result()
        total_weight = float(ring_sum[-1])
        if total_weight <= 0:
            return [], total_weight
        if self.dp is not None:
            return self.dp.decode_mean(ring_sum[:-1], self.round_seed, self.shapes), total_weight
        assert self.ring is not None
        count = len(self.server.survivors)
        summed = self.ring.decode_sum(ring_sum[:-1], count, round_seed=self.round_seed)
        scale = self.max_weight / total_weight
        return [
            (np.asarray(s, np.float32) * scale).astype(np.float32) for s in summed
        ], total_weight


class SecureCollection(TrainingCollection):
    """One round's SecAgg+ instance: the stages, then the mean of the survivors' sum."""

    def __init__(self, ctx: RoundContext, secure: SecureRound):
        super().__init__(ctx)
        self.secure = secure
        self.metrics: dict[str, m.TrainMetrics] = {}
        self._mean: Weights | None = None

    def secagg_task(self) -> m.SecAggTask:
        return self.secure.task_settings()

    def on_secagg(self, device_id: str, stage: m.SecAggStage, nbytes: int) -> str | None:
        msg = stage.data.get("msg")
        if not isinstance(msg, dict):
            return "secagg message without a 'msg' map"
        try:
            self.secure.receive(device_id, msg)
        except SecAggError as exc:
            return str(exc)
        self.ctx.rnd.uplink_bytes += nbytes
        metrics = stage.data.get("metrics")
        if stage.stage == Stage.ADVERTISE and isinstance(metrics, dict):
            try:
                self.metrics[device_id] = m.TrainMetrics.from_body(metrics)
            except ProtocolError as exc:
                self.ctx.reject(device_id, f"secagg/{Stage.ADVERTISE}", f"metrics: {exc}")
        return None

    async def collect(self) -> None:
        """Run the stages; an aborted round keeps no report (it then fails its minimum)."""
        rnd = self.ctx.rnd
        try:
            survivors = await self.secure.run(self.ctx.send_stage, rnd.deadline, rnd.target)
            mean, total_weight = self.secure.decode_mean()
            if total_weight <= 0:
                raise SecAggError("the secure sum carries no weight")
        except SecAggError as exc:
            rnd.reports.clear()
            log.warning("round %d: secure aggregation aborted: %s", rnd.number, exc)
            return
        self._mean = mean
        for device_id in sorted(survivors):
            metrics = self.metrics.get(device_id)
            self.ctx.record(
                device_id,
                ParticipantReport(
                    metrics.examples if metrics else 0,
                    metrics.loss if metrics else 0.0,
                    metrics.accuracy if metrics else 0.0,
                    metrics.train_time_s if metrics else 0.0,
                    0,
                ),
            )

    def mean(self) -> Weights:
        if self._mean is None:
            raise SecAggError("the secure aggregation of this round did not complete")
        return self._mean


class SecureAggregation(Aggregation):
    """SecAgg+ per round: the server only ever unmasks the sum of the survivors' inputs.

    With distributed DP each device clips, rotates and noises its own integer update, and the
    ring is sized by the DP parameters; otherwise the job's codec quantizes into the ring.
    """

    def __init__(
        self,
        settings: SecureSettings,
        dp: DistributedDP | None,
        *,
        fleet: str,
        job_id: str,
        max_example_weight: int,
        enrolment_key: Any = None,
    ):
        super().__init__(dp or NoPrivacy(), max_example_weight)
        self.settings = settings
        self.fleet = fleet
        self.job_id = job_id
        self.max_example_weight = max_example_weight
        self.enrolment_key = enrolment_key
        self.dp = dp

    def open(self, ctx: RoundContext) -> TrainingCollection:
        rnd = ctx.rnd
        secure = SecureRound(
            fleet=self.fleet,
            round_id=f"{self.job_id}.{rnd.number}.{rnd.attempt}",
            round_seed=rnd.round_seed,
            selected=ctx.chosen,
            shapes=ctx.shapes,
            codec_spec=ctx.codec,
            settings=self.settings,
            max_weight=self.max_example_weight,
            enrolment_key=self.enrolment_key,
            dp=self.dp,
        )
        return SecureCollection(ctx, secure)
