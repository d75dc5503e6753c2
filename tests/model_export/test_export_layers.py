"""Gradient parity of every builtin-only layer against TF autodiff of the standard ops."""

from __future__ import annotations

import tempfile
import zlib
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import tensorflow as tf

from fedge.edge_client.errors import ArtifactError
from fedge.edge_client.runtime import Signature, make_interpreter
from fedge.model_export import conv_pool
from fedge.model_export import layers as L
from fedge.model_export.exporter import op_names

Fn = Callable[[tf.Tensor, Sequence[tf.Tensor]], tf.Tensor]

CONV_CASES = [
    (padding, stride, hw)
    for padding in ("SAME", "VALID")
    for stride in (1, 2)
    for hw in ((7, 9), (8, 8), (5, 6), (13, 11))
]


def _case(
    name: str, fn: Fn, ref: Fn, x_shape: tuple[int, ...], p_shapes: Sequence[tuple[int, ...]]
) -> dict:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    x = rng.normal(size=x_shape).astype(np.float32)
    params = [rng.normal(size=s).astype(np.float32) for s in p_shapes]
    y = ref(tf.constant(x), [tf.constant(p) for p in params])
    g = rng.normal(size=y.shape).astype(np.float32)
    return {"name": name, "fn": fn, "ref": ref, "x": x, "params": params, "g": g}


def _grads(fn: Fn, x: tf.Tensor, params: Sequence[tf.Tensor], g: tf.Tensor) -> list[tf.Tensor]:
    with tf.GradientTape() as tape:
        tape.watch([x, *params])
        y = fn(x, list(params))
        loss = tf.reduce_sum(y * g)
    return [y, *tape.gradient(loss, [x, *params])]


def _conv_case(padding: str, stride: int, hw: tuple[int, int], cin: int = 2) -> dict:
    """Convolution plus bias; one input channel takes the other filter-gradient recipe."""
    return _case(
        f"conv{cin}_{padding}_{stride}_{hw[0]}x{hw[1]}",
        lambda x, p: L.conv2d(x, p[0], p[1], stride, padding),
        lambda x, p: tf.nn.conv2d(x, p[0], stride, padding) + p[1],
        (3, *hw, cin),
        [(3, 3, cin, 4), (4,)],
    )


def _block_case(
    padding: str, hw: tuple[int, int], cin: int = 2, k: int = 3, batch: int = 3
) -> dict:
    """Conv2D (stride 1) + ReLU + MeanPool2x2 as one fused block."""
    return _case(
        f"block{cin}_k{k}_{padding}_{hw[0]}x{hw[1]}",
        lambda x, p: L.conv_relu_pool(x, p[0], p[1], padding),
        lambda x, p: tf.nn.avg_pool2d(
            tf.nn.relu(tf.nn.conv2d(x, p[0], 1, padding) + p[1]), 2, 2, "VALID"
        ),
        (batch, *hw, cin),
        [(k, k, cin, 4), (4,)],
    )


BLOCK_CASES = [
    *[_block_case(padding, hw, cin) for padding, s, hw in CONV_CASES if s == 1 for cin in (1, 2)],
    _block_case("VALID", (9, 8), cin=3, k=5),
    _block_case("SAME", (6, 7), cin=2, k=1),
    _block_case("VALID", (28, 28), cin=1, batch=2),
    _case(
        "block2_keep_3x2",
        lambda x, p: L.conv_relu_pool(x, p[0], p[1], "VALID", keep=(3, 2)),
        lambda x, p: tf.nn.avg_pool2d(
            tf.nn.relu(tf.nn.conv2d(x, p[0], 1, "VALID") + p[1]), 2, 2, "VALID"
        )[:, :3, :2],
        (2, 13, 11, 2),
        [(3, 3, 2, 4), (4,)],
    ),
]

CASES = [
    _case("relu", lambda x, p: L.relu(x), lambda x, p: tf.nn.relu(x), (4, 5, 6, 3), []),
    _case(
        "dense",
        lambda x, p: L.dense(x, p[0], p[1]),
        lambda x, p: tf.matmul(x, p[0]) + p[1],
        (5, 7),
        [(7, 3), (3,)],
    ),
    _case(
        "pool_even",
        lambda x, p: L.mean_pool_2x2(x),
        lambda x, p: tf.nn.avg_pool2d(x, 2, 2, "VALID"),
        (3, 6, 8, 2),
        [],
    ),
    _case(
        "pool_odd",
        lambda x, p: L.mean_pool_2x2(x),
        lambda x, p: tf.nn.avg_pool2d(x, 2, 2, "VALID"),
        (3, 7, 5, 2),
        [],
    ),
    *[_conv_case(*c) for c in CONV_CASES],
    *[_conv_case(*c, cin=1) for c in CONV_CASES],
    *BLOCK_CASES,
]


def _close(a: np.ndarray, b: np.ndarray, rtol: float = 1e-5) -> bool:
    return bool(np.abs(a - b).max() <= rtol * max(1.0, float(np.abs(b).max())))


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_layer_forward_and_backward_match_tf_autodiff(case: dict) -> None:
    x = tf.constant(case["x"])
    params = [tf.constant(p) for p in case["params"]]
    g = tf.constant(case["g"])
    got = _grads(case["fn"], x, params, g)
    want = _grads(case["ref"], x, params, g)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.shape == b.shape
        assert _close(a.numpy(), b.numpy()), f"{case['name']} output {i}"


def test_cross_entropy_and_its_gradient_match_tf() -> None:
    rng = np.random.default_rng(1)
    logits = tf.constant(rng.normal(size=(6, 5)).astype(np.float32) * 4)
    labels = tf.constant(rng.integers(0, 5, 6).astype(np.int32))
    mask = tf.constant(np.array([1, 1, 0, 1, 0, 1], np.float32))
    out = []
    for ce in (L.softmax_cross_entropy, L.reference_cross_entropy):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            loss = L.masked_mean(ce(logits, labels), mask)
        out.append((loss.numpy(), tape.gradient(loss, logits).numpy()))
    assert _close(out[0][0], out[1][0]) and _close(out[0][1], out[1][1])
    assert np.all(out[0][1][[2, 4]] == 0.0)  # masked rows get no gradient


def test_masked_mean_of_an_empty_mask_is_zero() -> None:
    loss = L.masked_mean(tf.constant([3.0, 4.0]), tf.constant([0.0, 0.0]))
    assert float(loss) == 0.0


def test_same_padding_matches_tensorflow_convention() -> None:
    assert L.same_padding(28, 3, 1) == (1, 1)
    assert L.same_padding(28, 3, 2) == (0, 1)
    assert L.same_padding(7, 3, 2) == (1, 1)
    assert L.same_padding(5, 1, 1) == (0, 0)


def test_every_layer_runs_in_tflite_with_builtin_ops_and_matches_tf() -> None:
    """One TFLite model holding the forward and backward pass of every case above."""

    class Module(tf.Module):
        @tf.function(
            input_signature=[
                tf.TensorSpec(a.shape, tf.float32, name=f"{c['name']}_{i}")
                for c in CASES
                for i, a in enumerate([c["x"], *c["params"]])
            ]
        )
        def run(self, *inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            out, k = {}, 0
            for c in CASES:
                n = 1 + len(c["params"])
                x, params = inputs[k], list(inputs[k + 1 : k + n])
                k += n
                for j, t in enumerate(_grads(c["fn"], x, params, tf.constant(c["g"]))):
                    out[f"{c['name']}_out{j}"] = t
            return out

    module = Module()
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures={"run": module.run.get_concrete_function()})
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        model = converter.convert()
    assert not [op for op in op_names(model) if op.startswith("Flex")]
    got = Signature(make_interpreter(model), "run")(
        **{f"{c['name']}_{i}": a for c in CASES for i, a in enumerate([c["x"], *c["params"]])}
    )
    for c in CASES:
        want = _grads(
            c["ref"],
            tf.constant(c["x"]),
            [tf.constant(p) for p in c["params"]],
            tf.constant(c["g"]),
        )
        for j, b in enumerate(want):
            assert _close(got[f"{c['name']}_out{j}"], b.numpy()), f"{c['name']} output {j}"


def test_per_channel_int8_quantization_round_trips_within_half_a_step() -> None:
    rng = np.random.default_rng(2)
    w = rng.normal(size=(3, 3, 4, 5)).astype(np.float32) * np.arange(1, 6, dtype=np.float32)
    w[..., 2] = 0.0  # an all-zero channel keeps a usable scale
    q, scale = L.quantize_per_channel(w)
    assert q.dtype == np.int8 and scale.shape == (5,) and np.all(scale > 0)
    assert np.abs(L.dequantize(q, scale) - w).max() <= scale.max() / 2 + 1e-7
    assert np.all(L.dequantize(q, scale)[..., 2] == 0.0)


def test_fused_block_refuses_even_kernels_and_inputs_too_small_to_pool() -> None:
    x = tf.zeros([1, 8, 8, 1])
    with pytest.raises(ArtifactError, match="odd square kernel"):
        L.conv_relu_pool(x, tf.zeros([2, 2, 1, 3]), tf.zeros([3]), "VALID")
    with pytest.raises(ArtifactError, match="cannot keep"):
        L.conv_relu_pool(x, tf.zeros([3, 3, 1, 3]), tf.zeros([3]), "VALID", keep=(4, 3))
    with pytest.raises(ArtifactError, match="nothing to pool"):
        L.conv_relu_pool(x[:, :3, :3], tf.zeros([3, 3, 1, 3]), tf.zeros([3]), "VALID")


def test_s2d_tap_matrix_places_every_tap_once_per_phase() -> None:
    for k in (1, 3, 5):
        e = conv_pool._s2d_tap_matrix(k).reshape(-1, 4, k * k)  # [window, phase, tap]
        assert np.array_equal(e.sum(axis=0), np.ones((4, k * k), np.float32))


@pytest.mark.parametrize(
    ("make", "input_shape"),
    [
        (lambda: L.Conv2D(4, padding="FULL"), (8, 8, 1)),
        (lambda: L.Conv2D(4, stride=3), (8, 8, 1)),
        (lambda: L.Conv2D(4, kernel_size=5, padding="VALID"), (4, 4, 1)),
        (lambda: L.Dense(3), (4, 4, 1)),
        (lambda: L.MeanPool2x2(), (1, 8, 3)),
    ],
)
def test_bad_layer_configurations_raise_artifact_error(
    make: Callable[[], L.Layer], input_shape: tuple[int, ...]
) -> None:
    with pytest.raises(ArtifactError):
        make().output_shape(input_shape)
