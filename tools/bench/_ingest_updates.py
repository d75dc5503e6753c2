"""What both ingest paths use: packed update messages and a coordinator with a round open."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedge.edge_client import codec
from fedge.edge_client.artifact import load_artifact
from fedge.edge_client.errors import ConfigError
from fedge.edge_client.protocol import messages as m
from fedge.edge_client.protocol import topics
from fedge.edge_client.signing import load_or_create_signing_key
from fedge.server.blobs import BlobStore
from fedge.server.coordinator import Coordinator, Publish
from fedge.server.job import JobConfig, SelectionConfig
from fedge.server.rounds import RoundRun, RoundState
from fedge.server.store import SQLiteStore
from fedge.tools.bench._common import BENCH_FLEET

JOB = "bench"
POOL = 16  # distinct encoded payloads per spec (per publisher)


@dataclass(frozen=True)
class IngestRow:
    """One measured ingest configuration."""

    path: str
    spec: str
    updates: int
    bytes_per_update: int
    seconds: float
    cpu_s: float  # CPU time of the consuming (server) process over the same window
    handler_s: float | None = None  # time inside Coordinator.on_message (mosquitto rows)
    ack_wait_s: float | None = None  # of which awaiting the Ack publish (PUBACK from the broker)

    @property
    def updates_per_s(self) -> float:
        return self.updates / self.seconds if self.seconds > 0 else 0.0

    @property
    def updates_per_cpu_s(self) -> float:
        return self.updates / self.cpu_s if self.cpu_s > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        if self.seconds <= 0:
            return 0.0
        return self.updates * self.bytes_per_update / self.seconds / 1e6


# ---- building update messages --------------------------------------------------------------


def encode_pool(
    spec: str, shapes: Sequence[tuple[int, ...]], seed_of_round: int, count: int, seed: int
) -> list[bytes]:
    """``count`` codec payloads of random deltas (std 0.01) encoded with ``spec``."""
    rng = np.random.default_rng(seed)
    parsed = codec.parse_spec(spec)
    return [
        codec.encode_update(
            [rng.normal(0.0, 0.01, s).astype(np.float32) for s in shapes],
            parsed,
            shapes,
            round_seed=seed_of_round,
            rng=rng,
        )
        for _ in range(count)
    ]


def update_messages(
    payloads: Sequence[bytes], device_ids: Sequence[str], base_weights: str, round_id: int
) -> list[tuple[str, bytes]]:
    """One packed Update envelope per device, on that device's up topic."""
    out = []
    for i, device_id in enumerate(device_ids):
        update = m.Update(
            payload=payloads[i % len(payloads)],
            base_weights=m.base_digest(base_weights),
            metrics=m.TrainMetrics(loss=0.5, accuracy=0.5, examples=32, train_time_s=0.01),
        )
        envelope = m.make(update, job_id=JOB, round_id=round_id)
        out.append((topics.device_up(BENCH_FLEET, device_id), envelope.pack()))
    return out


def device_ids(count: int, prefix: str = "b") -> list[str]:
    return [f"{prefix}{i:06d}" for i in range(count)]


def mean_len(messages: Sequence[tuple[str, bytes]]) -> int:
    """Mean bytes of a message (envelope included)."""
    return round(sum(len(d) for _, d in messages) / max(len(messages), 1))


# ---- a real coordinator with a round open for the bench devices -----------------------------


def bench_coordinator(
    artifact_dir: Path, spec: str, state_dir: Path, publish: Publish, expected: int
) -> Coordinator:
    """A real Coordinator for the bench artifact, its weights initialised (no round yet)."""
    job = JobConfig(
        name=JOB,
        fleet=BENCH_FLEET,
        artifact=artifact_dir,
        rounds=1,
        codec=codec.parse_spec(spec),
        selection=SelectionConfig(target_reports=expected, min_reports=1),
    )
    key = load_or_create_signing_key(state_dir / "signing.key")
    coordinator = Coordinator(
        job,
        load_artifact(artifact_dir),
        SQLiteStore(state_dir / "fedge.db"),
        BlobStore(state_dir / "blobs"),
        key,
        "http://127.0.0.1:1",
        publish=publish,
    )
    coordinator.restore_or_init()
    return coordinator


def open_round(coordinator: Coordinator, selected: Sequence[str]) -> RoundRun:
    """Open training round 1 with ``selected`` chosen, as ``Coordinator.run_round`` does."""
    rnd = coordinator.engine.start(1, "train")
    rnd.target = len(selected)
    coordinator.configure(coordinator.train_rounds, rnd, list(selected))
    rnd.deadline = time.time() + 3600.0
    coordinator.engine.advance(rnd, RoundState.COLLECTING)
    return rnd


def check_round(rnd: RoundRun, expected: int, what: str) -> None:
    """Refuse to report a rate unless every update was accepted."""
    if len(rnd.reports) != expected or rnd.refused:
        raise ConfigError(
            f"{what}: {len(rnd.reports)} of {expected} updates accepted, {rnd.refused} refused"
        )
