"""Conv2D, ReLU and 2x2 mean pooling as one builtin-only block on the space-to-depth grid."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from fedge.edge_client.errors import ArtifactError
from fedge.model_export.ops import GradFn, check_conv_args, pad_same


def _s2d_tap_matrix(k: int) -> np.ndarray:
    """0/1 matrix ``E`` mapping a ``k x k`` kernel onto the space-to-depth grid.

    Row ``(u, v, dy, dx, pa, pb)`` (``kb = (k + 1) // 2`` blocks per axis, then the
    position inside a 2x2 block, then the output phase), column ``(i, j)``: the kernel
    tap that input pixel ``(2u + dy, 2v + dx)`` of a ``2kb x 2kb`` window meets when it
    produces output pixel ``(pa, pb)`` of the window's 2x2 output block.
    """
    kb = (k + 1) // 2
    e = np.zeros((kb, kb, 2, 2, 2, 2, k, k), np.float32)
    for u, v, dy, dx, pa, pb in np.ndindex(kb, kb, 2, 2, 2, 2):
        i, j = 2 * u + dy - pa, 2 * v + dx - pb
        if 0 <= i < k and 0 <= j < k:
            e[u, v, dy, dx, pa, pb, i, j] = 1.0
    return e.reshape(kb * kb * 16, k * k)


def _s2d_patch_filter(kb: int) -> np.ndarray:
    """One-hot ``[2kb, 2kb, 1, 4 * kb * kb]`` filter: a VALID stride-2 convolution with it
    gives the patches of :func:`_s2d_patches` (one input channel)."""
    f = np.zeros((2 * kb, 2 * kb, 1, 4 * kb * kb), np.float32)
    for u, v, dy, dx in np.ndindex(kb, kb, 2, 2):
        f[2 * u + dy, 2 * v + dx, 0, ((u * kb + v) * 2 + dy) * 2 + dx] = 1.0
    return f


def _s2d_patches(xs: tf.Tensor, kb: int, hp: int, wp: int) -> tf.Tensor:
    """``[B, hp, wp, kb * kb * C]`` patches (order ``u, v, channel``) of a ``kb x kb``
    VALID window over ``xs``: slices and two concatenations (no gather, no big filter)."""
    if kb == 1:
        return xs[:, :hp, :wp, :]
    cols = tf.concat([xs[:, :, v : v + wp, :] for v in range(kb)], axis=3)
    return tf.concat([cols[:, u : u + hp] for u in range(kb)], axis=3)


def _shift_sum(parts: Sequence[tf.Tensor], axis: int) -> tf.Tensor:
    """``sum_i parts[i]`` shifted by ``i`` along ``axis`` (zero-padded to ``len - 1`` more)."""
    last = len(parts) - 1
    total = parts[0]
    for i, part in enumerate(parts):
        if last:
            pads = [[0, 0]] * 4
            pads[axis] = [i, last - i]
            part = tf.pad(part, pads)
        total = part if i == 0 else total + part
    return total


@dataclass(frozen=True)
class _Block:
    """Sizes of one block: the (padded) input, the kernel and the pooled outputs computed."""

    b: int
    h: int
    w: int
    k: int
    cin: int
    cout: int
    hp: int
    wp: int

    @classmethod
    def of(
        cls, x_shape: Sequence[int], k: int, cin: int, cout: int, keep: tuple[int, int] | None
    ) -> _Block:
        """The block for a padded input of ``x_shape``; refuses one with nothing to pool."""
        b, h, w, _ = x_shape
        hp, wp = (h - k + 1) // 2, (w - k + 1) // 2
        if hp < 1 or wp < 1:
            raise ArtifactError(f"conv_relu_pool: {k}x{k} conv of {h}x{w} leaves nothing to pool")
        if keep is not None:
            if not (1 <= keep[0] <= hp and 1 <= keep[1] <= wp):
                raise ArtifactError(f"conv_relu_pool: cannot keep {keep} of {hp}x{wp} outputs")
            hp, wp = keep
        return cls(b, h, w, k, cin, cout, hp, wp)

    @property
    def kb(self) -> int:
        """Space-to-depth cells per axis of the window one pooled value depends on."""
        return (self.k + 1) // 2

    @property
    def hc(self) -> int:
        """Input rows the pool reads."""
        return 2 * (self.hp + self.kb - 1)

    @property
    def wc(self) -> int:
        """Input columns the pool reads."""
        return 2 * (self.wp + self.kb - 1)

    @property
    def n(self) -> int:
        """Pooled pixels, the rows of the patch matrix."""
        return self.b * self.hp * self.wp

    @property
    def s(self) -> int:
        """Channels of one space-to-depth cell."""
        return 4 * self.cin

    @property
    def taps(self) -> int:
        """Columns of the patch matrix."""
        return self.kb * self.kb * self.s


def conv_relu_pool(
    x: tf.Tensor,
    kernel: tf.Tensor,
    bias: tf.Tensor,
    padding: str,
    keep: tuple[int, int] | None = None,
) -> tf.Tensor:
    """``mean_pool_2x2(relu(conv2d(x, kernel, bias, 1, padding)))`` computed as one block.

    The pool reads each 2x2 block of conv outputs, so the block works on the 2x2
    space-to-depth grid of the input: one output cell there is the 2x2 block of conv
    outputs that one pooled value averages, and it depends on a ``2kb x 2kb`` input
    window (``kb = (k + 1) // 2`` cells of the space-to-depth grid). Forward:
    SPACE_TO_DEPTH, patches from slices and concatenations (``[N, kb * kb * 4 * C]``,
    ``N = B * Hp * Wp`` pooled pixels), one BATCH_MATMUL with the kernel laid out for
    all four output phases (``[kb * kb * 4 * C, 4 * O]``, built from the kernel by a
    constant 0/1 matrix, see :func:`_s2d_tap_matrix`), bias, ReLU, and the pool as a
    FULLY_CONNECTED with a constant ``[4 * O, O]`` matrix of ``1/4`` (XNNPACK). With
    one input channel the patches come from a stride-2 CONV_2D with a constant one-hot
    filter (XNNPACK) instead. Conv outputs the pool drops (odd trailing row/column) are
    never computed: the input is cropped to the window the pool reads. ``keep = (h, w)``
    computes only the first ``h x w`` pooled outputs (for a consumer that reads no
    more; the model spec passes it when the next block is VALID).

    Gradients, given ``g`` (pooled): ``g' = mask * g / 4`` per phase (``g / 4`` copied
    to the four phases by the transposed constant FULLY_CONNECTED, XNNPACK, where a
    broadcasting MUL over a middle axis is several times slower; ``mask =
    ceil(min(relu, 1))`` as in :func:`~fedge.model_export.ops.relu`); bias gradient a MEAN over
    pixels and phases; kernel gradient ``P^T g'`` (BATCH_MATMUL) folded back to
    ``[k, k, C, O]`` by the same 0/1 matrix; input gradient ``g' K'^T``
    (BATCH_MATMUL) summed back over the ``kb x kb`` window with pads and adds on the
    small space-to-depth grid, then DEPTH_TO_SPACE. No TRANSPOSE_CONV, no CONV_2D with
    a run-time filter: those are slow in tflite-runtime 2.14, BATCH_MATMUL with large
    operands is not.
    """
    kh, kw, cin, cout = (int(d) for d in kernel.shape)
    if kh != kw or kh % 2 == 0:
        raise ArtifactError(f"conv_relu_pool needs an odd square kernel, got {kh}x{kw}")
    check_conv_args(1, padding)
    if padding == "SAME":
        x = pad_same(x, kh, kh, 1)
    block = _Block.of([int(d) for d in x.shape], kh, cin, cout, keep)
    e = _s2d_tap_matrix(block.k)
    # [O, 4 * O]: one value to each of the four outputs of its pooling window, / 4
    quarter = np.tile(np.eye(cout, dtype=np.float32), (1, 4)) * np.float32(0.25)

    @tf.custom_gradient
    def _block(x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor) -> tuple[tf.Tensor, GradFn]:
        p, m, r, out = _forward(block, x, kernel, bias, e, quarter)

        def grad(g: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            return _backward(block, g, p, m, r, e, quarter)

        return out, grad

    return _block(x, kernel, bias)


def _forward(
    block: _Block,
    x: tf.Tensor,
    kernel: tf.Tensor,
    bias: tf.Tensor,
    e: np.ndarray,
    quarter: np.ndarray,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Patch matrix ``P``, kernel per phase ``m``, ReLU output and the pooled output."""
    b, h, w, k, cin, cout = block.b, block.h, block.w, block.k, block.cin, block.cout
    kb, hc, wc, hp, wp = block.kb, block.hc, block.wc, block.hp, block.wp
    xc = x[:, :hc, :wc, :] if (hc, wc) != (h, w) else x
    if cin == 1:
        # one float per copy would make slices and concatenations slow; a CONV_2D with
        # a constant one-hot filter (XNNPACK) gathers the same patches
        patches = tf.nn.conv2d(xc, tf.constant(_s2d_patch_filter(kb)), 2, "VALID")
    else:
        patches = _s2d_patches(tf.nn.space_to_depth(xc, 2), kb, hp, wp)
    p = tf.reshape(patches, [block.n, block.taps])
    # m: [(u, v, dy, dx), phase, C, O]
    m = tf.reshape(
        tf.matmul(tf.constant(e), tf.reshape(kernel, [k * k, cin * cout])),
        [kb * kb * 4, 4, cin, cout],
    )
    k_fwd = tf.reshape(tf.transpose(m, [0, 2, 1, 3]), [block.taps, 4 * cout])
    y = tf.matmul(p, k_fwd) + tf.tile(bias, [4])
    r = tf.nn.relu(y)
    out = tf.reshape(tf.matmul(r, tf.constant(quarter.T.copy())), [b, hp, wp, cout])
    return p, m, r, out


def _backward(
    block: _Block,
    g: tf.Tensor,
    p: tf.Tensor,
    m: tf.Tensor,
    r: tf.Tensor,
    e: np.ndarray,
    quarter: np.ndarray,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Input, kernel and bias gradients of the block for the pooled gradient ``g``."""
    b, h, w, k, cin, cout = block.b, block.h, block.w, block.k, block.cin, block.cout
    kb, hc, wc, hp, wp = block.kb, block.hc, block.wc, block.hp, block.wp
    n, s, taps = block.n, block.s, block.taps
    mask = tf.math.ceil(tf.minimum(r, 1.0))
    g2 = mask * tf.matmul(tf.reshape(g, [n, cout]), tf.constant(quarter))
    db = tf.reduce_sum(tf.reduce_mean(tf.reshape(g2, [b, hp * wp, 4, cout]), [1, 2]), 0)
    db = db * float(hp * wp * 4)
    dkf = tf.matmul(tf.transpose(p), g2)  # [(u, v, dy, dx, C), (phase, O)]
    dm = tf.reshape(
        tf.transpose(tf.reshape(dkf, [kb * kb * 4, cin, 4, cout]), [0, 2, 1, 3]),
        [kb * kb * 16, cin * cout],
    )
    dk = tf.reshape(tf.matmul(tf.constant(e.T.copy()), dm), [k, k, cin, cout])
    k_bwd = tf.reshape(tf.transpose(m, [1, 3, 0, 2]), [4 * cout, taps])
    dp = tf.reshape(tf.matmul(g2, k_bwd), [b, hp, wp, kb, kb * s])
    rows = _shift_sum([dp[:, :, :, u, :] for u in range(kb)], axis=1)
    rows = tf.reshape(rows, [b, hc // 2, wp, kb, s])
    dxs = _shift_sum([rows[:, :, :, v, :] for v in range(kb)], axis=2)
    dx = tf.nn.depth_to_space(dxs, 2)
    if (hc, wc) != (h, w):
        dx = tf.pad(dx, [[0, 0], [0, h - hc], [0, w - wc], [0, 0]])
    return dx, dk, db
