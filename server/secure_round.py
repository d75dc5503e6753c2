"""One secure-aggregation round on the server: SecAgg+ stages over MQTT, decoding of the exact sum.

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedge.edge_client import codec
from fedge.edge_client.errors import ConfigError, SecAggError
from fedge.edge_client.privacy import check_wraparound
from fedge.edge_client.protocol.messages import SecAggTask
from fedge.edge_client.secagg import GraphKind, SecAggConfig, decode_message

if TYPE_CHECKING:
    from fedge.server.dp_controller import DistributedDP

log = logging.getLogger("fedge.server.secagg")

SendStage = Callable[[str, str, dict[str, Any]], Awaitable[None]]
REQUEST_STAGE = {"advertise": "roster", "share": "masked_request", "masked": "unmask_request"}


@dataclass(frozen=True)
class SecureSettings:
    """The job's [secagg] table, validated."""

    clip: float = 1.0
    bits: int = 16
    dropout_rate: float = 0.2
    corrupt_fraction: float = 0.0
    graph: str = "harary"
    stage_timeout_s: float = 15.0
    min_clients: int = 3

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> SecureSettings:
        known = set(cls.__dataclass_fields__) | {"enabled"}
        unknown = set(table) - known
        if unknown:
            raise ConfigError(
                f"[secagg] has unknown keys {sorted(unknown)}; allowed: {sorted(known)}"
            )
        settings = cls(**{k: v for k, v in table.items() if k != "enabled"})
        if settings.graph not in ("harary", "complete"):
            raise ConfigError("secagg.graph must be harary (SecAgg+) or complete (SecAgg)")
        if not (settings.clip > 0 and 1 <= settings.bits <= 24 and settings.stage_timeout_s > 0):
            raise ConfigError("secagg needs clip > 0, bits in [1, 24] and stage_timeout_s > 0")
        return settings


class SecureRound:
    """Runs the four stages for the selected devices and returns the decoded weighted sum."""

    def __init__(
        self,
        *,
        fleet: str,
        round_id: str,
        round_seed: int,
        selected: list[str],
        shapes: list[tuple[int, ...]],
        codec_spec: codec.CodecSpec,
        settings: SecureSettings,
        max_weight: int,
        enrolment_key: Any = None,
        dp: DistributedDP | None = None,
    ):
        from fedge.server.secagg import SecAggServer

        self.settings = settings
        self.round_seed = round_seed
        self.shapes = shapes
        self.dp = dp
        self.max_weight = 1 if dp is not None else max_weight
        self.selected = len(selected)
        self.ring: codec.RingCodec | None = None
        if dp is None:
            self.ring = codec.RingCodec(
                codec_spec, shapes, settings.clip, settings.bits, self.selected
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
            graph=GraphKind.COMPLETE if settings.graph == "complete" else GraphKind.HARARY,
        )
        self.round_id = round_id
        self.server = SecAggServer(
            round_id, self.config, selected, enrolment_public_key=enrolment_key
        )
        self.progress = asyncio.Event()
        self.stage_log: list[tuple[str, float, int]] = []  # (stage, seconds, devices)

    def task_settings(self) -> SecAggTask:
        """What every selected device needs to take part."""
        return SecAggTask(
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
        stage = "advertise"
        deadline = advertise_deadline
        while True:
            t0 = time.time()
            await self._wait(deadline, stage, target)
            requests = self.server.close_stage()  # raises SecAggError below the threshold
            self.stage_log.append((stage, time.time() - t0, len(requests)))
            if stage == "unmask":
                return set(self.server.survivors)
            out = REQUEST_STAGE[stage]
            await asyncio.gather(*(send(d, out, req.to_wire()) for d, req in requests.items()))
            stage = {"advertise": "share", "share": "masked", "masked": "unmask"}[stage]
            deadline = time.time() + self.settings.stage_timeout_s

    async def _wait(self, deadline: float, stage: str, target: int) -> None:
        while time.time() < deadline:
            pending = self.server.pending()
            if not pending:
                return
            if stage == "advertise" and self.selected - len(pending) >= target:
                return  # enough devices trained: the stragglers are over-selection slack
            self.progress.clear()
            try:
                await asyncio.wait_for(self.progress.wait(), timeout=max(deadline - time.time(), 0))
            except TimeoutError:
                return

    def decode_mean(self) -> tuple[list[np.ndarray], float]:
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


def secure_settings(table: dict[str, Any]) -> SecureSettings | None:
    """The job's secure-aggregation settings, or None when it is off."""
    if not table.get("enabled"):
        return None
    try:
        return SecureSettings.from_table(table)
    except (TypeError, SecAggError) as exc:
        raise ConfigError(f"[secagg]: {exc}") from exc
