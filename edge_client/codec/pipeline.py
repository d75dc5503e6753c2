"""Stateless update coding: clip, sparsify, rotate, quantize, pack, and the validating decoder.

Payload (msgpack): ``[FORMAT_VERSION, fingerprint, [section, ...]]`` where each section is
``[indices | nil, scales | nil, values]``: Elias-Fano coded indices (top-k only), float16 or
float32 little-endian scales (one per block, quantized specs only) and bitpacked levels (or
float32 values when unquantized). Every length is implied by the spec and shapes, so the decoder
checks each one instead of trusting the payload.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgpack
import numpy as np

from fedge.edge_client.arrays import Array
from fedge.edge_client.codec.bitpack import pack_uint, packed_size, unpack_uint
from fedge.edge_client.codec.indices import coded_size, decode_indices, encode_indices
from fedge.edge_client.codec.layout import (
    Section,
    Shapes,
    check_shapes,
    fingerprint,
    sections,
    tensor_sizes,
)
from fedge.edge_client.codec.quantize import (
    block_count,
    block_max,
    dequantize,
    expand_scales,
    stochastic_round,
    storable_scales,
)
from fedge.edge_client.codec.rotation import rotate, unrotate
from fedge.edge_client.codec.seeds import check_seed
from fedge.edge_client.codec.sparsify import random_indices, topk_indices
from fedge.edge_client.codec.spec import CodecSpec, Sparsifier
from fedge.edge_client.errors import CodecError

FORMAT_VERSION = 1
_SECTION_OVERHEAD = 16  # msgpack array header + three bin/nil headers
_PAYLOAD_OVERHEAD = 32  # outer array, version, fingerprint, section array header


def flatten(tensors: Sequence[Array], shapes: Shapes) -> Array:
    """Concatenate tensors (checked against ``shapes``, finite) into one float64 vector."""
    if len(tensors) != len(shapes):
        raise CodecError(f"update has {len(tensors)} tensors, expected {len(shapes)}")
    parts = []
    for i, (tensor, shape) in enumerate(zip(tensors, shapes, strict=True)):
        array = np.asarray(tensor)
        if array.shape != shape:
            raise CodecError(f"tensor {i} has shape {array.shape}, expected {shape}")
        if not np.issubdtype(array.dtype, np.floating) or not np.all(np.isfinite(array)):
            raise CodecError(f"tensor {i} must be finite floating point (dtype {array.dtype})")
        parts.append(array.astype(np.float64).ravel())
    return np.concatenate(parts)


def unflatten(flat: Array, shapes: Shapes) -> list[Array]:
    """Split a flat vector into float32 tensors of the given shapes."""
    out, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        out.append(flat[start : start + size].astype(np.float32).reshape(shape))
        start += size
    return out


def prediction(spec: CodecSpec, prior: Sequence[Array] | None, shapes: Shapes) -> Array | None:
    """Predictive coding (``pred``): ``spec.predict`` times the flattened ``prior`` step.

    The device trains from the global weights plus this prediction (`predicted_weights`) and
    codes what its training adds; the server adds the prediction back. ``prior`` is the
    previous global step, which both sides decode from the same downlink-delta blob
    (:attr:`edge_client.codec.downlink.ModelDelta.step`), so they agree bit for bit. None
    when the spec does not predict or there is no prior (the first round).
    """
    if spec.predict is None or prior is None:
        return None
    return spec.predict * flatten(prior, shapes)


def predicted_weights(
    spec: CodecSpec, weights: Sequence[Array], prior: Sequence[Array] | None
) -> list[Array]:
    """Where a device starts local training: the global ``weights``, plus the `prediction`
    from ``prior`` with a ``pred`` spec (float32, one array per tensor)."""
    start = [np.asarray(w, np.float32) for w in weights]
    shapes = tuple(w.shape for w in start)
    predicted = prediction(spec, prior, shapes)
    if predicted is None:
        return start
    return [w + p for w, p in zip(start, unflatten(predicted, shapes), strict=True)]


def clip_l2(x: Array, max_norm: float) -> Array:
    """Scale ``x`` down so that its L2 norm is at most ``max_norm``."""
    norm = float(np.linalg.norm(x))
    return x * (max_norm / norm) if norm > max_norm else x


def payload_bound(spec: CodecSpec, shapes: Sequence[Sequence[int]]) -> int:
    """Largest payload a valid encoder can produce for this spec and these shapes."""
    total = _PAYLOAD_OVERHEAD
    for sec in sections(spec, check_shapes(shapes)):
        total += _SECTION_OVERHEAD + _values_bytes(spec, sec)
        if spec.sparsifier is Sparsifier.TOPK:
            total += coded_size(sec.size, sec.count)
        if spec.bits is not None:
            total += 4 * block_count(sec.width, spec.block)
    return total


def _values_bytes(spec: CodecSpec, sec: Section) -> int:
    return 4 * sec.width if spec.bits is None else packed_size(sec.width, spec.bits)


def _select(spec: CodecSpec, vec: Array, sec: Section, round_seed: int, i: int) -> Array:
    if spec.sparsifier is Sparsifier.TOPK:
        return topk_indices(vec, sec.count)
    return random_indices(sec.size, sec.count, round_seed=round_seed, section=i)


def encode_update(
    delta: Sequence[Array],
    spec: CodecSpec,
    shapes: Sequence[Sequence[int]],
    *,
    round_seed: int,
    rng: np.random.Generator,
) -> bytes:
    """Encode an update (no error feedback; see :class:`UpdateEncoder` for that).

    Parameters
    ----------
    delta : one float array per tensor, shapes as given.
    spec : the codec spec.
    shapes : tensor shapes, known to both sides.
    round_seed : the round's shared seed (random-k index sets and rotations).
    rng : the device's generator for stochastic rounding.
    """
    shapes_t = check_shapes(shapes)
    return encode_flat(flatten(delta, shapes_t), spec, shapes_t, round_seed=round_seed, rng=rng)


def encode_flat(
    flat: Array, spec: CodecSpec, shapes: Shapes, *, round_seed: int, rng: np.random.Generator
) -> bytes:
    """:func:`encode_update` on an already flattened and checked float64 update."""
    round_seed = check_seed("round_seed", round_seed)
    if spec.clip is not None:
        flat = clip_l2(flat, spec.clip)
    out = []
    for i, sec in enumerate(sections(spec, shapes)):
        vec = flat[sec.offset : sec.offset + sec.size]
        index_blob = None
        if spec.sparsifier is not Sparsifier.DENSE:
            idx = _select(spec, vec, sec, round_seed, i)
            vec = vec[idx]
            if spec.sparsifier is Sparsifier.TOPK:
                index_blob = encode_indices(idx, sec.size)
        if spec.rotate:
            vec = rotate(vec, round_seed=round_seed, section=i)
        if spec.bits is None:
            out.append([index_blob, None, vec.astype("<f4").tobytes()])
            continue
        scales = storable_scales(block_max(vec, spec.block))
        if not np.all(np.isfinite(scales)):
            raise CodecError("update values are too large to quantize (scale overflows float32)")
        per_coord = expand_scales(scales.astype(np.float64), spec.block, vec.size)
        levels = stochastic_round(vec, per_coord, spec.bits, rng)
        scale_blob = scales.astype(scales.dtype.newbyteorder("<")).tobytes()
        out.append([index_blob, scale_blob, pack_uint(levels, spec.bits)])
    return msgpack.packb([FORMAT_VERSION, fingerprint(spec, shapes), out], use_bin_type=True)


def _unpack(payload: bytes, max_bytes: int) -> object:
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise CodecError(f"payload must be bytes, got {type(payload).__name__}")
    if len(payload) > max_bytes:
        raise CodecError(f"payload of {len(payload)} bytes exceeds the limit of {max_bytes}")
    try:
        return msgpack.unpackb(
            payload,
            raw=False,
            max_bin_len=max_bytes,
            max_array_len=max_bytes,
            max_str_len=0,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise CodecError(f"payload is not a valid msgpack update: {exc}") from None


def _blob(value: object, name: str, i: int, required: bool) -> bytes | None:
    if value is None and not required:
        return None
    if required and isinstance(value, bytes):
        return value
    need = "bytes" if required else "nil"
    raise CodecError(f"section {i}: {name} must be {need}, got {type(value).__name__}")


def _scales(blob: bytes, n_blocks: int, i: int) -> Array:
    if len(blob) == 2 * n_blocks:
        scales = np.frombuffer(blob, dtype="<f2").astype(np.float64)
    elif len(blob) == 4 * n_blocks:
        scales = np.frombuffer(blob, dtype="<f4").astype(np.float64)
    else:
        raise CodecError(f"section {i}: {len(blob)} scale bytes do not fit {n_blocks} blocks")
    if not np.all(np.isfinite(scales)) or np.any(scales < 0):
        raise CodecError(f"section {i}: scales must be finite and >= 0")
    return scales


def _section_values(spec: CodecSpec, sec: Section, raw: list[object], i: int) -> Array:
    scale_blob = _blob(raw[1], "scales", i, spec.bits is not None)
    value_blob = _blob(raw[2], "values", i, True)
    assert value_blob is not None
    if len(value_blob) != _values_bytes(spec, sec):
        raise CodecError(
            f"section {i}: {len(value_blob)} value bytes, expected {_values_bytes(spec, sec)}"
        )
    if spec.bits is None:
        values = np.frombuffer(value_blob, dtype="<f4").astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise CodecError(f"section {i}: values contain NaN or infinity")
        return values
    assert scale_blob is not None
    scales = _scales(scale_blob, block_count(sec.width, spec.block), i)
    levels = unpack_uint(value_blob, sec.width, spec.bits)
    return dequantize(levels, expand_scales(scales, spec.block, sec.width), spec.bits)


def decode_update(
    payload: bytes,
    spec: CodecSpec,
    shapes: Sequence[Sequence[int]],
    *,
    round_seed: int,
    max_bytes: int | None = None,
    prior: Sequence[Array] | None = None,
) -> list[Array]:
    """Decode and validate a payload made by :func:`encode_update`.

    Parameters
    ----------
    payload : the bytes received.
    spec, shapes, round_seed : as used by the encoder.
    max_bytes : reject larger payloads (default: :func:`payload_bound` of spec and shapes).
    prior : the previous global step the encoder was given (``pred`` specs); its prediction
        is added back.

    Returns
    -------
    One float32 array per tensor (zeros where nothing was sent and nothing was predicted).

    Raises
    ------
    CodecError for any malformed, mismatched or oversized payload.
    """
    shapes_t = check_shapes(shapes)
    flat = decode_flat(payload, spec, shapes_t, round_seed=round_seed, max_bytes=max_bytes)
    predicted = prediction(spec, prior, shapes_t)
    return unflatten(flat if predicted is None else flat + predicted, shapes_t)


def decode_flat(
    payload: bytes, spec: CodecSpec, shapes: Shapes, *, round_seed: int, max_bytes: int | None
) -> Array:
    """:func:`decode_update` returning the flat float64 update."""
    round_seed = check_seed("round_seed", round_seed)
    limit = payload_bound(spec, shapes) if max_bytes is None else max_bytes
    top = _unpack(payload, limit)
    if not isinstance(top, list) or len(top) != 3:
        raise CodecError("payload must be a 3-element array [version, fingerprint, sections]")
    version, print_, raw_sections = top
    if type(version) is not int or version != FORMAT_VERSION:
        raise CodecError(f"payload format version {version!r}, this decoder reads {FORMAT_VERSION}")
    if print_ != fingerprint(spec, shapes):
        raise CodecError(f"payload was encoded for another spec or shapes (expected {spec})")
    layout = sections(spec, shapes)
    if not isinstance(raw_sections, list) or len(raw_sections) != len(layout):
        raise CodecError(f"payload must hold {len(layout)} sections")
    flat = np.zeros(sum(tensor_sizes(shapes)))
    for i, (sec, raw) in enumerate(zip(layout, raw_sections, strict=True)):
        if not isinstance(raw, list) or len(raw) != 3:
            raise CodecError(f"section {i} must be a 3-element array [indices, scales, values]")
        values = _section_values(spec, sec, raw, i)
        if spec.rotate:
            values = unrotate(values, sec.count, round_seed=round_seed, section=i)
        index_blob = _blob(raw[0], "indices", i, spec.sparsifier is Sparsifier.TOPK)
        if spec.sparsifier is Sparsifier.DENSE:
            flat[sec.offset : sec.offset + sec.size] = values
            continue
        if index_blob is not None:
            idx = decode_indices(index_blob, sec.size, sec.count)
        else:
            idx = random_indices(sec.size, sec.count, round_seed=round_seed, section=i)
            if not spec.error_feedback:
                values = values * (sec.size / sec.count)
        flat[sec.offset + idx] = values
    return flat
