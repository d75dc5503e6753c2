"""The job's model: global weights, optimizer state and downlink delta, restored and committed.

`Checkpoints` holds the committed model and the signed blobs devices download for it. A round
`prepare`s its next model without changing anything (so a round that fails to persist leaves
the model as it was) and the model moves only once the engine has committed the round
(`adopt`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedge.edge_client import codec
from fedge.edge_client.arrays import Array
from fedge.edge_client.artifact import Artifact
from fedge.edge_client.protocol import messages as m
from fedge.edge_client.weights import pack_weights, unpack_weights
from fedge.server.blobs import SignedBlobs
from fedge.server.job import JobConfig
from fedge.server.optimizers import ServerOptimizer

log = logging.getLogger("fedge.server")

Weights = list[Array]


@dataclass(frozen=True)
class BlobSet:
    """The signed, content-addressed blobs devices download for a round."""

    model: m.BlobRef
    manifest: m.BlobRef
    weights: m.BlobRef


@dataclass(frozen=True)
class WeightsDelta:
    """The signed downlink delta from the previous global weights to the current ones."""

    base_sha: str  # the weights it applies to
    ref: m.BlobRef
    step: Weights | None  # the decoded step: the prior of `pred` specs, else None


@dataclass(frozen=True)
class Checkpoint:
    """A round's next model, ready to commit."""

    weights: Weights
    weights_sha: str
    optimizer_sha: str | None
    delta: WeightsDelta | None

    @property
    def delta_row(self) -> tuple[str, str] | None:
        """(delta blob digest, digest of the weights it applies to), as the store keeps it."""
        return (self.delta.ref.sha256, self.delta.base_sha) if self.delta else None


class Checkpoints:
    """The committed model of one job and the blobs that carry it to devices."""

    def __init__(
        self,
        job: JobConfig,
        artifact: Artifact,
        blobs: SignedBlobs,
        optimizer: ServerOptimizer,
    ):
        self.job = job
        self.artifact = artifact
        self.blobs = blobs
        self.optimizer = optimizer
        self.shapes = [tuple(t.shape) for t in artifact.manifest.tensors]
        self.weights: Weights = []
        self.weights_sha = ""
        self.delta: WeightsDelta | None = None
        self._model_refs = (
            blobs.ref("model", artifact.model_bytes),
            blobs.ref("manifest", artifact.manifest.to_json()),
        )
        self._blob_set: BlobSet | None = None

    @property
    def prior(self) -> Weights | None:
        """The previous global step, which `pred` specs predict from (None without one)."""
        return self.delta.step if self.delta else None

    def blob_set(self) -> BlobSet:
        """The round's blobs; the weights are read, hashed and signed once per model version."""
        if self._blob_set is None or self._blob_set.weights.sha256 != self.weights_sha:
            weights_ref = self.blobs.ref("weights", self.blobs.blobs.get(self.weights_sha))
            self._blob_set = BlobSet(*self._model_refs, weights_ref)
        return self._blob_set

    # restore -----------------------------------------------------------------------------
    def start_fresh(self, initial: Weights) -> None:
        """Start from the artifact's initial weights (a job with no committed round)."""
        self.weights = initial
        self.weights_sha = self.blobs.blobs.put(pack_weights(initial))

    def restore(self, row: dict[str, Any]) -> None:
        """Load the checkpoint a job row names: weights, optimizer state, downlink delta."""
        self.weights = unpack_weights(self.blobs.blobs.get(row["weights_sha"]), self.shapes)
        self.weights_sha = row["weights_sha"]
        if row["optimizer_sha"]:
            self.optimizer.load_state_blob(self.blobs.blobs.get(row["optimizer_sha"]))
        self._restore_delta(row)

    def _restore_delta(self, row: dict[str, Any]) -> None:
        """Offer the last committed round's downlink delta again (and its ``pred`` prior)."""
        if self.job.downlink is None or not row["delta_sha"] or not row["delta_base_sha"]:
            return
        try:
            blob = self.blobs.blobs.get(row["delta_sha"])
        except FileNotFoundError:
            log.warning(
                "job %s: downlink delta %s is missing from the blob store; devices "
                "fetch full weights for one round",
                self.job.name,
                row["delta_sha"][:12],
            )
            return
        decoded = codec.decode_model_delta(blob, self.shapes)
        self.delta = self._signed_delta(row["delta_base_sha"], blob, decoded)

    def _signed_delta(self, base_sha: str, blob: bytes, decoded: codec.ModelDelta) -> WeightsDelta:
        """A signed downlink delta and its decoded step (the prior of ``pred`` specs)."""
        step = decoded.step if self.job.codec.predict is not None else None
        return WeightsDelta(base_sha, self.blobs.ref("weights-delta", blob), step)

    # commit ------------------------------------------------------------------------------
    def prepare(self, mean_delta: Sequence[Array], round_seed: int) -> Checkpoint | None:
        """The next model from a round's mean delta (None if it is not finite).

        The server optimizer's state moves here (as it always has); the global weights move
        only in `adopt`, after the round is committed.
        """
        new_weights = self.optimizer.apply(self.weights, list(mean_delta))
        if not all(np.isfinite(w).all() for w in new_weights):
            return None
        delta = None
        if self.job.downlink is not None:
            # Devices holding the previous model fetch a compressed delta; the server adopts the
            # same reconstruction, so everyone holds identical weights (errors do not pile up).
            blob = codec.encode_model_delta(
                new_weights, self.weights, self.job.downlink, seed=round_seed
            )
            decoded = codec.decode_model_delta(blob, self.shapes)
            new_weights = decoded.apply(self.weights)
            delta = self._signed_delta(self.weights_sha, blob, decoded)
        weights_sha = self.blobs.blobs.put(pack_weights(new_weights))
        state = self.optimizer.state_blob()
        optimizer_sha = self.blobs.blobs.put(state) if state is not None else None
        return Checkpoint(new_weights, weights_sha, optimizer_sha, delta)

    def adopt(self, checkpoint: Checkpoint) -> None:
        """Make a committed checkpoint the job's model."""
        self.weights, self.weights_sha = checkpoint.weights, checkpoint.weights_sha
        self.delta = checkpoint.delta
