"""Interpreters and validated artifacts shared by every agent of a process (a simulator runs many)."""

from __future__ import annotations

import asyncio

from fedge.edge_client.artifact import Artifact
from fedge.edge_client.trainer import LocalTrainer


class TrainerCache:
    """One interpreter per artifact digest, shared by every agent of a process; one job at a time.

    Also keeps the validated `Artifact` of each (model, manifest) digest pair, so agents that
    share a process parse and check a model once, not once per task.
    """

    def __init__(self) -> None:
        self._trainers: dict[str, LocalTrainer] = {}
        self._artifacts: dict[tuple[str, str], Artifact] = {}
        self.lock = asyncio.Lock()

    def artifact(self, model: bytes, manifest: bytes, digests: tuple[str, str]) -> Artifact:
        """The artifact of these (digest-verified) bytes, validated on first use only."""
        artifact = self.known(digests)
        if artifact is None:
            artifact = Artifact.from_bytes(manifest, model)
            self._artifacts[digests] = artifact
        return artifact

    def known(self, digests: tuple[str, str]) -> Artifact | None:
        """The artifact already built from the verified (model, manifest) of these digests."""
        return self._artifacts.get(digests)

    def get(self, artifact: Artifact) -> LocalTrainer:
        key = artifact.manifest.sha256
        if key not in self._trainers:
            self._trainers[key] = LocalTrainer(artifact)
        return self._trainers[key]
