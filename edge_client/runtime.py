"""TFLite interpreter shim: tflite_runtime, then ai_edge_litert, then tf.lite (lazily)."""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from fedge.edge_client.arrays import Array
from fedge.edge_client.errors import ArtifactError
from fedge.edge_client.flatbuffer_check import check_flatbuffer

# (import path of the module holding `Interpreter`, distribution name, runtime name)
_CANDIDATES: tuple[tuple[str, str, str], ...] = (
    ("tflite_runtime.interpreter", "tflite-runtime", "tflite-runtime"),
    ("ai_edge_litert.interpreter", "ai-edge-litert", "ai-edge-litert"),
    ("tensorflow.lite.python.interpreter", "tensorflow", "tensorflow-lite"),
)
_FLEX_MARKERS = ("select tensorflow op", "flex")


@dataclass(frozen=True)
class Backend:
    """The interpreter implementation found on this device.

    ``resolver_types`` is the package's ``OpResolverType`` enum: ``AUTO`` applies the
    default XNNPACK delegate, ``BUILTIN_WITHOUT_DEFAULT_DELEGATES`` does not.
    """

    name: str
    version: str
    interpreter_cls: Any
    resolver_types: Any


@functools.cache
def backend() -> Backend:
    """Return the first importable interpreter (cached for the process).

    Raises
    ------
    ArtifactError
        If none of tflite_runtime, ai_edge_litert or tensorflow is installed.
    """
    for module_name, dist, name in _CANDIDATES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        return Backend(name, version, module.Interpreter, module.OpResolverType)
    raise ArtifactError(
        "no TFLite interpreter installed: install tflite-runtime (pip install 'fedge[edge]')"
    )


def runtime_name() -> str:
    """Name of the interpreter package in use, e.g. ``tflite-runtime``."""
    return backend().name


def runtime_version() -> str:
    """Version of the interpreter package in use, e.g. ``2.14.0``."""
    return backend().version


def _translate(exc: Exception, what: str) -> ArtifactError:
    text = str(exc)
    if any(marker in text.lower() for marker in _FLEX_MARKERS):
        return ArtifactError(
            f"{what}: Flex ops present (Select TensorFlow ops are not supported by "
            f"{runtime_name()}; export with TFLite builtin ops only): {text.strip()[:300]}"
        )
    return ArtifactError(f"{what}: {text.strip()[:300]}")


def make_interpreter(model_bytes: bytes, num_threads: int = 1, *, xnnpack: bool = True) -> Any:
    """Build an interpreter for a flatbuffer held in memory, XNNPACK applied by default.

    The interpreter applies its default XNNPACK delegate lazily, in its own
    ``allocate_tensors()``; :class:`Signature` allocates each signature's subgraph
    directly, which would skip it. So this calls ``allocate_tensors()`` once here,
    which hands every subgraph's supported ops (those with static weights: the frozen
    extractor's convolutions, pooling, transposes, element-wise ops) to XNNPACK.

    Parameters
    ----------
    model_bytes
        The ``model.tflite`` contents.
    num_threads
        CPU threads the kernels (and XNNPACK) may use (>= 1).
    xnnpack
        Apply the default XNNPACK delegate (False: builtin kernels only).

    Raises
    ------
    ArtifactError
        If the bytes are not a loadable TFLite model.
    """
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ArtifactError(f"num_threads must be an int >= 1, got {num_threads!r}")
    if not isinstance(model_bytes, bytes):
        raise ArtifactError(f"model must be bytes, got {type(model_bytes).__name__}")
    check_flatbuffer(model_bytes)
    found = backend()
    resolver = (
        found.resolver_types.AUTO
        if xnnpack
        else found.resolver_types.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    try:
        interpreter = found.interpreter_cls(
            model_content=model_bytes,
            num_threads=num_threads,
            experimental_op_resolver_type=resolver,
        )
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise _translate(exc, "cannot load TFLite model") from exc
    return interpreter


@dataclass(frozen=True)
class TensorInfo:
    """Index, shape and dtype of one signature input or output tensor."""

    index: int
    shape: tuple[int, ...]
    dtype: np.dtype[Any]


class Signature:
    """One allocated signature of an interpreter, called with little per-call overhead.

    It drives the interpreter wrapper's ``SetTensor``/``Invoke``/``GetTensor`` by
    subgraph index (the same pybind API in all three interpreter packages), so a call
    does not re-run ``ResizeInputTensor``/``AllocateTensors`` like ``SignatureRunner``.
    It keeps the interpreter object alive: that object owns the model bytes the native
    interpreter reads its constant tensors from.
    """

    def __init__(self, interpreter: Any, key: str) -> None:
        available = interpreter.get_signature_list()
        if key not in available:
            raise ArtifactError(f"signature {key!r} missing from model (has {sorted(available)})")
        runner = interpreter.get_signature_runner(key)
        self.key = key
        self._interpreter = interpreter
        self._wrapper = interpreter._interpreter
        self._subgraph = self._wrapper.GetSubgraphIndexFromSignature(key)
        try:
            self._wrapper.AllocateTensors(self._subgraph)
        except (ValueError, RuntimeError) as exc:
            raise _translate(exc, f"cannot prepare signature {key!r}") from exc
        try:
            self.inputs = _details(runner.get_input_details())
            self.outputs = _details(runner.get_output_details())
        except UnicodeDecodeError as exc:
            raise ArtifactError(f"signature {key!r} has a tensor name that is not UTF-8") from exc

    def setter(self, name: str) -> Callable[[Array | np.generic], None]:
        """Fast ``set(name, value)`` for hot loops (no per-call name lookup)."""
        return functools.partial(
            self._wrapper.SetTensor, self.inputs[name].index, subgraph_index=self._subgraph
        )

    def getter(self, name: str) -> Callable[[], Array]:
        """Fast ``get(name)`` for hot loops."""
        return functools.partial(self._wrapper.GetTensor, self.outputs[name].index, self._subgraph)

    def invoker(self) -> Callable[[], None]:
        """Fast ``invoke()`` for hot loops."""
        return functools.partial(self._wrapper.Invoke, self._subgraph)

    def set(self, name: str, value: Array) -> None:
        """Copy ``value`` into input ``name`` (dtype and shape must already match)."""
        self._wrapper.SetTensor(self.inputs[name].index, value, self._subgraph)

    def invoke(self) -> None:
        """Run the signature on the inputs set so far."""
        self._wrapper.Invoke(self._subgraph)

    def get(self, name: str) -> Array:
        """Copy of output ``name`` after :meth:`invoke`."""
        tensor: Array = self._wrapper.GetTensor(self.outputs[name].index, self._subgraph)
        return tensor

    def __call__(self, **inputs: ArrayLike) -> dict[str, Array]:
        """Check, set every input, invoke and return every output."""
        if set(inputs) != set(self.inputs):
            raise ArtifactError(
                f"signature {self.key!r} takes inputs {sorted(self.inputs)}, got {sorted(inputs)}"
            )
        for name, value in inputs.items():
            info = self.inputs[name]
            arr = np.asarray(value, dtype=info.dtype, order="C")
            if arr.shape != info.shape:
                raise ArtifactError(
                    f"signature {self.key!r} input {name!r} needs shape {info.shape}, "
                    f"got {arr.shape}"
                )
            self.set(name, arr)
        try:
            self.invoke()
        except (ValueError, RuntimeError) as exc:
            raise _translate(exc, f"signature {self.key!r} failed") from exc
        return {name: self.get(name) for name in self.outputs}


def _details(raw: Mapping[str, Mapping[str, Any]]) -> dict[str, TensorInfo]:
    return {
        name: TensorInfo(int(d["index"]), tuple(int(v) for v in d["shape"]), np.dtype(d["dtype"]))
        for name, d in raw.items()
    }


# ---------------------------------------------------------------- flatbuffer bounds check
