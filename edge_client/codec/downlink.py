"""Downlink: send a new global model as a compressed delta from the version a device holds.

The devices end up with ``apply_model_delta(old, payload)``, not exactly ``new``. The server must
adopt that reconstruction as the version devices hold and encode the next delta from it; the
quantization error of one round is then carried into the next delta (error feedback on the
server side) instead of accumulating. For the same reason random-k is never rescaled here.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import msgpack
import numpy as np

from fedge.edge_client.arrays import Array
from fedge.edge_client.codec.layout import Shapes, check_shapes
from fedge.edge_client.codec.pipeline import decode_flat, encode_flat, flatten, unflatten
from fedge.edge_client.codec.seeds import check_seed
from fedge.edge_client.codec.spec import CodecSpec, parse_spec
from fedge.edge_client.errors import CodecError

DOWNLINK_VERSION = 1
_DIGEST_BYTES = 16


def _shapes_of(tensors: Sequence[Array]) -> Shapes:
    return check_shapes([np.shape(t) for t in tensors])


def _digest(tensors: Sequence[Array]) -> bytes:
    h = hashlib.sha256()
    for t in tensors:
        a = np.ascontiguousarray(t, dtype="<f4")
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return h.digest()[:_DIGEST_BYTES]


def _as_downlink(spec: CodecSpec) -> CodecSpec:
    return dataclasses.replace(spec, error_feedback=spec.lossy)


def encode_model_delta(
    new: Sequence[Array], old: Sequence[Array], spec: CodecSpec, *, seed: int = 0
) -> bytes:
    """Encode ``new - old`` with ``spec`` for devices that hold ``old``.

    Parameters
    ----------
    new : the new global weights.
    old : the weights the devices hold (an earlier reconstruction, see module docstring).
    spec : codec spec (top-k, random-k, quantization, rotation; error-feedback flag ignored).
    seed : seeds rotation, random-k and stochastic rounding (carried in the payload).

    Returns
    -------
    msgpack ``[version, spec, seed, digest of old, update payload]``.
    """
    shapes = _shapes_of(old)
    seed = check_seed("seed", seed)
    spec = _as_downlink(spec)
    delta = flatten(new, shapes) - flatten(old, shapes)
    inner = encode_flat(delta, spec, shapes, round_seed=seed, rng=np.random.default_rng(seed))
    return msgpack.packb(
        [DOWNLINK_VERSION, str(spec), seed, _digest(old), inner], use_bin_type=True
    )


@dataclass(frozen=True)
class ModelDelta:
    """A decoded downlink payload: the base model it was made from and the step it carries."""

    base_digest: bytes
    flat_step: Array
    shapes: Shapes

    @cached_property
    def step(self) -> list[Array]:
        """The global step (new minus old weights), one float32 array per tensor.

        Predictive coding (``pred``) uses it as the prior on the device and on the server.
        """
        return unflatten(self.flat_step, self.shapes)

    def apply(self, old: Sequence[Array]) -> list[Array]:
        """The new model from the held weights ``old``.

        Raises
        ------
        CodecError when ``old`` has other shapes or is not the base model of the delta.
        """
        flat_old = flatten(old, self.shapes)
        if self.base_digest != _digest(old):
            raise CodecError(
                "downlink delta was made from a different base model than the one held"
            )
        return unflatten(flat_old + self.flat_step, self.shapes)


def apply_model_delta(old: Sequence[Array], payload: bytes) -> list[Array]:
    """Rebuild the new model from the held weights ``old`` and a downlink payload.

    Raises
    ------
    CodecError when the payload is malformed or was made for a different base model.
    """
    return decode_model_delta(payload, _shapes_of(old)).apply(old)


def decode_model_delta(payload: bytes, shapes: Sequence[Sequence[int]]) -> ModelDelta:
    """Decode a downlink payload for a model of ``shapes`` (once; apply and step share it).

    Raises
    ------
    CodecError when the payload is malformed or made for other shapes.
    """
    shapes_t = check_shapes(shapes)
    try:
        top = msgpack.unpackb(payload, raw=False, max_map_len=0, max_ext_len=0)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise CodecError(f"downlink payload is not valid msgpack: {exc}") from None
    if not (isinstance(top, list) and len(top) == 5):
        raise CodecError("downlink payload must be [version, spec, seed, digest, update]")
    version, spec_text, seed, digest, inner = top
    if version != DOWNLINK_VERSION:
        raise CodecError(f"downlink version {version!r}, this decoder reads {DOWNLINK_VERSION}")
    if not (isinstance(spec_text, str) and isinstance(digest, bytes) and isinstance(inner, bytes)):
        raise CodecError("downlink payload fields have the wrong types")
    spec = _as_downlink(parse_spec(spec_text))
    step = decode_flat(inner, spec, shapes_t, round_seed=check_seed("seed", seed), max_bytes=None)
    return ModelDelta(digest, step, shapes_t)
