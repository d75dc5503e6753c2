"""Self-check of an exported artifact: it runs in the device runtime and trains like TF."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from fedge.edge_client.artifact import Artifact, Manifest
from fedge.edge_client.errors import ArtifactError
from fedge.model_export import layers as L
from fedge.model_export.zoo import ModelSpec

TOLERANCE = 1e-5
# The verification step's lr is set so the largest weight change is MAX_STEP: the
# tolerance is then 1 % of the step. ReLU's kink makes a gradient jump when float
# rounding flips the sign of a pre-activation within ~1e-7 of zero, so a fixed large
# lr would make the check fail by chance on big conv activations.
MAX_STEP = 1e-3


def reference_gradients(
    spec: ModelSpec,
    params: Sequence[np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray,
) -> tuple[float, list[np.ndarray]]:
    """Masked-mean loss and its gradients by TF autodiff of the standard ops."""
    tensors = [tf.constant(p) for p in params]
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        logits = spec.reference_logits(tf.constant(x), tensors)
        loss = L.masked_mean(L.reference_cross_entropy(logits, tf.constant(y)), tf.constant(mask))
    return float(loss), [g.numpy() for g in tape.gradient(loss, tensors)]


def verification_batch(
    spec: ModelSpec, batch_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A seeded random batch whose last quarter is masked out (padding rows)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, (batch_size, *spec.input_shape)).astype(np.float32)
    y = rng.integers(0, spec.num_classes, batch_size).astype(np.int32)
    mask = np.ones(batch_size, np.float32)
    mask[batch_size - batch_size // 4 :] = 0.0
    return x, y, mask


def verify_artifact(
    spec: ModelSpec,
    params: Sequence[np.ndarray],
    manifest: Manifest,
    model_bytes: bytes,
    *,
    seed: int = 0,
    tolerance: float = TOLERANCE,
) -> float:
    """Load the artifact in the device runtime, run every signature, compare one step with TF.

    Returns
    -------
    float
        The max abs difference between the runtime's and TF's updated weights.

    Raises
    ------
    ArtifactError
        If the artifact does not load, a signature misbehaves, or the step differs
        from TF's by more than ``tolerance``.
    """
    artifact = Artifact.from_bytes(manifest.to_json(), model_bytes)
    model = artifact.load()
    names = [t.name for t in manifest.tensors]
    feed = dict(zip(names, params, strict=True))
    model.set_weights(**feed)
    got = model.get_weights()
    for name in names:
        if not np.array_equal(got[name], feed[name]):
            raise ArtifactError(
                f"verification: get_weights()[{name!r}] differs from what set_weights stored"
            )

    x, y, mask = verification_batch(spec, manifest.batch_size, seed)
    ref_logits = spec.reference_logits(tf.constant(x), [tf.constant(p) for p in params]).numpy()
    logits = model.infer(x=x)["logits"]
    scale = max(1.0, float(np.abs(ref_logits).max()))
    if not np.allclose(logits, ref_logits, rtol=0, atol=tolerance * 10 * scale):
        raise ArtifactError(
            f"verification: infer differs from TF by {np.abs(logits - ref_logits).max():.3g}"
        )
    ev = model.evaluate(x=x, y=y, mask=mask)
    ref_correct = float(((ref_logits.argmax(1) == y) * mask).sum())
    if float(ev["correct"]) != ref_correct:
        raise ArtifactError(
            f"verification: evaluate correct={ev['correct']}, TF says {ref_correct}"
        )

    ref_loss, grads = reference_gradients(spec, params, x, y, mask)
    lr = np.float32(MAX_STEP / max(max(float(np.abs(g).max()) for g in grads), 1e-12))
    ref_params = [p - lr * g for p, g in zip(params, grads, strict=True)]
    if not np.isclose(float(ev["loss"]) / mask.sum(), ref_loss, rtol=1e-4, atol=1e-5):
        raise ArtifactError(
            f"verification: evaluate loss {ev['loss']} does not match TF's {ref_loss}"
        )
    loss = float(model.train(x=x, y=y, mask=mask, lr=lr)["loss"])
    if not np.isclose(loss, ref_loss, rtol=1e-4, atol=1e-5):
        raise ArtifactError(f"verification: train loss {loss} does not match TF's {ref_loss}")
    after = model.get_weights()
    diff = max(float(np.abs(after[n] - r).max()) for n, r in zip(names, ref_params, strict=True))
    if diff > tolerance:
        raise ArtifactError(
            f"verification: one train step differs from TF autodiff by {diff:.3g} (> {tolerance})"
        )
    return diff
