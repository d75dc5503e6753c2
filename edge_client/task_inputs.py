"""What a task trains on: its verified model, the global weights, and the ``pred`` prior step."""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedge.edge_client import codec
from fedge.edge_client.artifact import Artifact
from fedge.edge_client.errors import ArtifactError, CodecError
from fedge.edge_client.fetch import BlobFetcher
from fedge.edge_client.hooks import AgentHooks
from fedge.edge_client.protocol import messages as m
from fedge.edge_client.trainer_cache import TrainerCache
from fedge.edge_client.weights import pack_weights, unpack_weights

log = logging.getLogger("fedge.device")
Arrays = list[npt.NDArray[Any]]
Shapes = list[tuple[int, ...]]


@dataclass(frozen=True)
class TaskInputs:
    """A task's model, global weights and (``pred`` training tasks) prior step."""

    artifact: Artifact
    weights: Arrays
    prior: Arrays | None = None

    @property
    def shapes(self) -> Shapes:
        return shapes_of(self.artifact)


def shapes_of(artifact: Artifact) -> Shapes:
    """The shapes of the artifact's trainable tensors, in manifest order."""
    return [tuple(t.shape) for t in artifact.manifest.tensors]


def predicts(task: m.Task) -> bool:
    """Whether a task trains with predictive coding from a downlink delta it names."""
    return (
        task.kind == "train"
        and task.weights_delta is not None
        and codec.parse_spec(task.codec).predict is not None
    )


def blob_fetcher(
    state_dir: Path, server_key: Ed25519PublicKey, ca_file: Path | None
) -> BlobFetcher:
    """The device's fetcher: a cache in the state dir, the server's key, the fleet CA for TLS."""
    ssl_context = None
    if ca_file is not None:
        ssl_context = ssl.create_default_context(cafile=str(ca_file))
    return BlobFetcher(state_dir / "cache", server_key, ssl_context=ssl_context)


class TaskInputSource:
    """Turns a task into its inputs: from memory, the blob cache, a downlink delta, or the server.

    Everything fetched is checked against the digests and signatures the task carries.
    """

    def __init__(
        self, fetcher: BlobFetcher, trainers: TrainerCache, hooks: AgentHooks, device_id: str
    ):
        self.fetcher = fetcher
        self.trainers = trainers
        self.hooks = hooks
        self.device_id = device_id

    async def gather(self, task: m.Task) -> TaskInputs:
        """The task's model, global weights and (``pred`` training tasks) prior step."""
        before = self.fetcher.bytes_downloaded
        try:
            artifact = await self._artifact(task)
            shapes = shapes_of(artifact)
            delta = prior = None
            if predicts(task):
                # The prior of predictive coding is the step the downlink delta carries,
                # decoded exactly as the server decodes it (no delta: neither side predicts).
                assert task.weights_delta is not None
                blob = await self.fetcher.fetch(task.weights_delta, "weights-delta")
                delta = codec.decode_model_delta(blob, shapes)
                prior = delta.step
            weights = await self._weights_from_delta(task, shapes, delta)
            if weights is None:
                weights_blob = await self.fetcher.fetch(task.weights, "weights")
                weights = unpack_weights(weights_blob, shapes)
        finally:
            self.fetcher.release()  # the task's downloads are done
        await self.hooks.after_transfer(self.fetcher.bytes_downloaded - before, "down")
        return TaskInputs(artifact, weights, prior)

    async def _artifact(self, task: m.Task) -> Artifact:
        """The task's model: the one in memory if this device holds its verified files, else
        fetched (from the cache or the server) and checked against the signed digests."""
        digests = (task.model.sha256, task.manifest.sha256)
        known = self.trainers.known(digests)
        if (
            known is not None
            and self.fetcher.holds(task.model)
            and self.fetcher.holds(task.manifest)
        ):
            return known
        model = await self.fetcher.fetch(task.model, "model")
        manifest = await self.fetcher.fetch(task.manifest, "manifest")
        return self.trainers.artifact(model, manifest, digests)

    async def _weights_from_delta(
        self, task: m.Task, shapes: Shapes, delta: codec.ModelDelta | None
    ) -> Arrays | None:
        """Rebuild the new global weights from the cached previous ones plus the signed delta
        (``delta`` when the task already fetched and decoded it, else fetched here).

        The result must hash to the signed weights digest of the task; otherwise (or when the
        previous weights are not cached) the caller downloads the full weights.
        """
        if task.weights_delta is None or task.delta_base is None:
            return None
        base = self.fetcher.cached(task.delta_base)
        if base is None:
            return None
        try:
            old = unpack_weights(base, shapes)
            if delta is None:
                blob = await self.fetcher.fetch(task.weights_delta, "weights-delta")
                delta = codec.decode_model_delta(blob, shapes)
            new: Arrays = delta.apply(old)
        except (ArtifactError, CodecError) as exc:
            log.info(
                "device %s: weights delta unusable (%s); fetching full weights", self.device_id, exc
            )
            return None
        blob = pack_weights(new)
        if not self.fetcher.store_verified(task.weights, "weights", blob):
            return None
        return new
