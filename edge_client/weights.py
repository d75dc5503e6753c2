"""The weights blob: an ordered list of tensors, checked against the artifact's manifest."""

from __future__ import annotations

from collections.abc import Sequence

import msgpack
import numpy as np

from fedge.edge_client.arrays import Array
from fedge.edge_client.errors import ArtifactError, ProtocolError
from fedge.edge_client.protocol.messages import decode_tensor, encode_tensor

_FORMAT = "fedge-weights-v1"


def pack_weights(weights: Sequence[Array]) -> bytes:
    """Serialise weights (manifest order) as msgpack tensors."""
    return msgpack.packb(
        {"format": _FORMAT, "tensors": [encode_tensor(np.asarray(w, np.float32)) for w in weights]},
        use_bin_type=True,
    )


def unpack_weights(data: bytes, shapes: Sequence[tuple[int, ...]]) -> list[Array]:
    """Parse a weights blob and check it has exactly the expected float32 shapes."""
    try:
        raw = msgpack.unpackb(data, raw=False)
    except Exception as exc:
        raise ArtifactError(f"weights blob is not msgpack: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != _FORMAT:
        raise ArtifactError("weights blob has an unknown format")
    tensors = raw.get("tensors")
    if not isinstance(tensors, list) or len(tensors) != len(shapes):
        raise ArtifactError(f"weights blob must hold {len(shapes)} tensors")
    out = []
    for i, (obj, shape) in enumerate(zip(tensors, shapes, strict=True)):
        try:
            arr = decode_tensor(obj, name=f"weights[{i}]")
        except ProtocolError as exc:
            raise ArtifactError(str(exc)) from exc
        if arr.dtype != np.float32 or tuple(arr.shape) != tuple(shape):
            raise ArtifactError(
                f"weights[{i}] is {arr.dtype}{list(arr.shape)}, expected float32{list(shape)}"
            )
        out.append(arr)
    return out
