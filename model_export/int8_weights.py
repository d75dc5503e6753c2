"""Store frozen float32 kernels of a converted flatbuffer as int8 constants + DEQUANTIZE."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils

from fedge.edge_client.errors import ArtifactError

# DEQUANTIZE reads per-channel int8 (several scales, a quantized dimension) from version 4.
DEQUANTIZE_VERSION = 4


def quantize_per_channel(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 quantization with one float32 scale per output channel (last axis)."""
    absmax = np.abs(weights).reshape(-1, weights.shape[-1]).max(axis=0)
    scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(weights / scale), -127, 127).astype(np.int8)
    return q, scale


def dequantize(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``q * scale`` as float32: the weights the artifact's DEQUANTIZE ops produce."""
    return q.astype(np.float32) * scale


@dataclass(frozen=True)
class _Layout:
    """One way the converter may have laid a kernel out: its int8 twin and channel axis."""

    kernel: int
    q: np.ndarray
    scale: np.ndarray
    axis: int


def _layouts(kernels: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[bytes, _Layout]:
    """float32 bytes -> layout, for each kernel as given and with its output axis first.

    The converter keeps a convolution kernel HWIO -> OHWI and a dense kernel [in, out]
    -> [out, in]; both are "output channel first" permutations of what the model holds.
    """
    found: dict[bytes, _Layout] = {}
    for index, (q, scale) in enumerate(kernels):
        last = q.ndim - 1
        for perm in (tuple(range(q.ndim)), (last, *range(last))):
            q_perm = np.ascontiguousarray(q.transpose(perm))
            values = q_perm.astype(np.float32) * scale.reshape(
                [-1 if axis == perm.index(last) else 1 for axis in range(q.ndim)]
            )
            found[values.astype(np.float32).tobytes()] = _Layout(
                index, q_perm, scale.astype(np.float32), perm.index(last)
            )
    return found


def _dequantize_code(model: schema.ModelT) -> int:
    for i, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.DEQUANTIZE:
            code.version = max(code.version, DEQUANTIZE_VERSION)
            return i
    code = schema.OperatorCodeT()
    code.builtinCode = schema.BuiltinOperator.DEQUANTIZE
    code.deprecatedBuiltinCode = schema.BuiltinOperator.DEQUANTIZE
    code.version = DEQUANTIZE_VERSION
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def store_kernels_as_int8(
    model_bytes: bytes, kernels: Sequence[tuple[np.ndarray, np.ndarray]]
) -> bytes:
    """Replace each float32 constant equal to ``q * scale`` by an int8 constant + DEQUANTIZE.

    Parameters
    ----------
    model_bytes
        A converted flatbuffer whose frozen kernels are float32 constants.
    kernels
        ``(q, scale)`` per frozen kernel: int8 values and one float32 scale per output
        channel (the last axis).

    Returns
    -------
    bytes
        The flatbuffer with every matching constant stored once as int8 (shared by all
        subgraphs) and dequantized by a DEQUANTIZE op at the start of each subgraph.
        TFLite evaluates a DEQUANTIZE of a constant once per interpreter, and the
        XNNPACK delegate takes its output as static weights.

    Raises
    ------
    ArtifactError
        If a kernel is not found as a float32 constant (the converter transformed it).
    """
    if not kernels:
        return model_bytes
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
    layouts = _layouts(kernels)
    int8_buffers: dict[bytes, int] = {}
    replaced: set[int] = set()
    code = None
    for subgraph in model.subgraphs:
        dequantize_ops = []
        for index, tensor in enumerate(subgraph.tensors):
            data = model.buffers[tensor.buffer].data if tensor.buffer else None
            if tensor.type != schema.TensorType.FLOAT32 or data is None:
                continue
            raw = np.asarray(data, np.uint8).tobytes()
            layout = layouts.get(raw)
            if layout is None:
                continue
            code = _dequantize_code(model) if code is None else code
            if raw not in int8_buffers:
                buffer = schema.BufferT()
                buffer.data = np.frombuffer(layout.q.tobytes(), np.uint8)
                model.buffers.append(buffer)
                int8_buffers[raw] = len(model.buffers) - 1
            subgraph.tensors.append(_int8_tensor(tensor, layout, int8_buffers[raw]))
            tensor.buffer = 0  # the float32 tensor becomes DEQUANTIZE's output
            op = schema.OperatorT()
            op.opcodeIndex = code
            op.inputs = np.array([len(subgraph.tensors) - 1], np.int32)
            op.outputs = np.array([index], np.int32)
            dequantize_ops.append(op)
            replaced.add(layout.kernel)
        subgraph.operators = dequantize_ops + list(subgraph.operators or [])
    missing = sorted(set(range(len(kernels))) - replaced)
    if missing:
        raise ArtifactError(
            f"frozen kernels {missing} are not float32 constants of the converted model "
            "(the converter transformed them); cannot store them as int8"
        )
    used = {t.buffer for subgraph in model.subgraphs for t in subgraph.tensors}
    for i, buffer in enumerate(model.buffers):
        if i and i not in used:
            buffer.data = None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _int8_tensor(like: schema.TensorT, layout: _Layout, buffer: int) -> schema.TensorT:
    tensor = schema.TensorT()
    tensor.shape = np.array(layout.q.shape, np.int32)
    tensor.type = schema.TensorType.INT8
    tensor.buffer = buffer
    name = like.name.decode() if isinstance(like.name, bytes) else str(like.name or "kernel")
    tensor.name = f"{name}/int8"
    quant = schema.QuantizationParametersT()
    quant.scale = layout.scale
    quant.zeroPoint = np.zeros(len(layout.scale), np.int64)
    quant.quantizedDimension = layout.axis
    tensor.quantization = quant
    return tensor
