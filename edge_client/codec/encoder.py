"""The device-side encoder: error feedback around the stateless update pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from fedge.edge_client.arrays import Array
from fedge.edge_client.codec.error_feedback import ErrorFeedback, ResidualStatus
from fedge.edge_client.codec.layout import check_shapes
from fedge.edge_client.codec.pipeline import decode_flat, encode_flat, flatten, unflatten
from fedge.edge_client.codec.seeds import check_seed
from fedge.edge_client.codec.spec import CodecSpec


@dataclass(frozen=True)
class EncodedUpdate:
    """An encoded update: the bytes to publish, and (on demand) what the server decodes
    before it adds any prediction back."""

    payload: bytes
    spec: CodecSpec
    shapes: tuple[tuple[int, ...], ...]
    round_seed: int

    @cached_property
    def decoded(self) -> list[Array]:
        """What the server decodes from ``payload`` (prediction not added), one array per tensor."""
        flat = decode_flat(
            self.payload, self.spec, self.shapes, round_seed=self.round_seed, max_bytes=None
        )
        return unflatten(flat, self.shapes)


class UpdateEncoder:
    """Encode successive updates of one model, carrying the error-feedback residual.

    Parameters
    ----------
    spec : the codec spec (error feedback on when ``spec.error_feedback``).
    shapes : tensor shapes of the update.
    residual_path : file in the device state dir for the residual (None: memory only).
    """

    def __init__(
        self, spec: CodecSpec, shapes: Sequence[Sequence[int]], residual_path: Path | None = None
    ) -> None:
        self.spec = spec
        self.shapes = check_shapes(shapes)
        self.feedback = ErrorFeedback(self.shapes, residual_path) if spec.error_feedback else None

    @property
    def residual_status(self) -> ResidualStatus:
        """How the residual was loaded (EMPTY when error feedback is off)."""
        return self.feedback.status if self.feedback else ResidualStatus.EMPTY

    def encode(self, delta: Sequence[Array], *, round_seed: int, rng_seed: int) -> EncodedUpdate:
        """Encode ``delta`` (+ residual) and update the residual with what was not sent.

        The residual is updated and saved as soon as the payload is built: if the upload is
        then lost, that update is lost as in any dropout.

        Parameters
        ----------
        delta : new local weights minus the weights training started from, one array per
            tensor (with ``pred``, the `predicted_weights`; the server adds the prediction).
        round_seed : the round's shared seed.
        rng_seed : this device's seed for stochastic rounding.
        """
        rng = np.random.default_rng(check_seed("rng_seed", rng_seed))
        flat = flatten(delta, self.shapes)
        corrected = self.feedback.correct(flat) if self.feedback else flat
        payload = encode_flat(corrected, self.spec, self.shapes, round_seed=round_seed, rng=rng)
        encoded = EncodedUpdate(payload, self.spec, self.shapes, round_seed)
        if self.feedback:
            self.feedback.update(corrected, np.concatenate([d.ravel() for d in encoded.decoded]))
        return encoded
