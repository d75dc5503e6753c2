"""What every message body shares: the base class, field validation, tensors on the wire."""

from __future__ import annotations

import math
import re
from contextvars import ContextVar
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, ClassVar

import numpy as np

from fedge.edge_client.arrays import Array
from fedge.edge_client.errors import ProtocolError
from fedge.edge_client.protocol.envelope import DEFAULT_LIMITS, Limits

ALLOWED_DTYPES = {"float32", "float16", "int32", "uint32", "int8", "uint8", "int64"}
SHA256_BYTES = 32
_LOWER_HEX = re.compile(r"[0-9a-f]*")
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def as_map(value: Any) -> Any:
    """A dataclass as nested dicts of its fields (as `dataclasses.asdict`, without copying
    the leaves: a body is packed once and never changed)."""
    if is_dataclass(value) and not isinstance(value, type):
        names = _FIELD_NAMES.get(type(value))
        if names is None:
            names = _FIELD_NAMES[type(value)] = tuple(f.name for f in fields(value))
        return {name: as_map(getattr(value, name)) for name in names}
    if isinstance(value, list | tuple):
        return [as_map(v) for v in value]
    if isinstance(value, dict):
        return {k: as_map(v) for k, v in value.items()}
    return value


def encode_tensor(array: Array) -> dict[str, Any]:
    """Tensor as raw little-endian bytes with its dtype and shape (0-d tensors keep shape [])."""
    arr = np.asarray(array)
    if not arr.flags.c_contiguous:
        arr = arr.copy(order="C")
    if arr.dtype.name not in ALLOWED_DTYPES:
        raise ProtocolError(f"dtype {arr.dtype} cannot travel on the wire")
    return {
        "dtype": arr.dtype.name,
        "shape": list(arr.shape),
        "data": arr.astype(arr.dtype.newbyteorder("<")).tobytes(),
    }


def decode_tensor(obj: Any, limits: Limits = DEFAULT_LIMITS, name: str = "tensor") -> Array:
    """Validate and rebuild a tensor encoded by `encode_tensor`."""
    if not isinstance(obj, dict):
        raise ProtocolError(f"{name}: expected a tensor map")
    dtype, shape, data = obj.get("dtype"), obj.get("shape"), obj.get("data")
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise ProtocolError(f"{name}: dtype {dtype!r} not allowed")
    if not isinstance(shape, list) or len(shape) > 8:
        raise ProtocolError(f"{name}: shape must be a list of at most 8 dims")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"{name}: shape dims must be non-negative ints")
    for d in shape:  # bound each dim too: a zero elsewhere must not hide a huge one
        if d > limits.max_tensor_elements:
            raise ProtocolError(
                f"{name}: shape dim {d}: {d} elements exceed the limit {limits.max_tensor_elements}"
            )
    count = math.prod(shape)
    if count > limits.max_tensor_elements:
        raise ProtocolError(
            f"{name}: {count} elements exceed the limit {limits.max_tensor_elements}"
        )
    if not isinstance(data, bytes):
        raise ProtocolError(f"{name}: data must be bytes")
    np_dtype = np.dtype(dtype).newbyteorder("<")
    if len(data) != count * np_dtype.itemsize:
        raise ProtocolError(f"{name}: {len(data)} bytes do not match shape {shape} of {dtype}")
    arr = np.frombuffer(data, dtype=np_dtype).reshape(shape).astype(np.dtype(dtype))
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ProtocolError(f"{name}: contains NaN or infinity")
    return arr


_ACTIVE_LIMITS: ContextVar[Limits] = ContextVar("fedge_protocol_limits", default=DEFAULT_LIMITS)


class _Field:
    """Validation helpers used by message `from_body` methods."""

    @staticmethod
    def get(
        body: dict[str, Any],
        key: str,
        kind: type | tuple[type, ...],
        *,
        optional: bool = False,
        default: Any = None,
    ) -> Any:
        if key not in body or body[key] is None:
            if optional:
                return default
            raise ProtocolError(f"missing field {key!r}")
        value = body[key]
        if (
            isinstance(value, bool)
            and kind is not bool
            and bool not in (kind if isinstance(kind, tuple) else (kind,))
        ):
            raise ProtocolError(f"field {key!r} must not be a bool")
        if kind is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, kind):
            raise ProtocolError(f"field {key!r} has type {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ProtocolError(f"field {key!r} is not finite")
        if isinstance(value, str) and len(value) > _ACTIVE_LIMITS.get().max_string_len:
            raise ProtocolError(f"field {key!r} is too long")
        return value

    @staticmethod
    def in_range(key: str, value: float, lo: float, hi: float) -> float:
        if not lo <= value <= hi:
            raise ProtocolError(f"field {key!r}={value} outside [{lo}, {hi}]")
        return value

    @staticmethod
    def known(body: dict[str, Any], cls: type) -> None:
        """Refuse a map body with a key that is not a field of the dataclass ``cls``."""
        names = {f.name for f in fields(cls)}
        for key in body:
            if key not in names:
                raise ProtocolError(f"unknown field {key!r:.40}")

    @staticmethod
    def positional(body: list[Any], names: tuple[str, ...], required: int) -> dict[str, Any]:
        """Name the elements of an array body; those after the first ``required`` are optional."""
        if not required <= len(body) <= len(names):
            raise ProtocolError(
                f"body has {len(body)} fields, expected {required} to {len(names)}: {names}"
            )
        return dict(zip(names, body, strict=False))

    @staticmethod
    def hex_digest(key: str, value: str, size: int = SHA256_BYTES) -> str:
        """``value`` if it is ``size`` bytes in lowercase hex (by default a whole sha256)."""
        if len(value) != 2 * size or not _LOWER_HEX.fullmatch(value):
            what = " (a sha256)" if size == SHA256_BYTES else ""
            raise ProtocolError(f"field {key!r} must be {2 * size} lowercase hex characters{what}")
        return value


F = _Field


@dataclass(frozen=True)
class Message:
    """Base of all message bodies; subclasses set TYPE."""

    TYPE: ClassVar[str] = ""
    WIRE_BODY: ClassVar[type] = dict  # a map keyed by field name, or a positional list

    def to_body(self) -> dict[str, Any] | list[Any]:
        body: dict[str, Any] = as_map(self)
        return body

    @classmethod
    def from_body(cls, body: Any, limits: Limits) -> Message:
        raise NotImplementedError
