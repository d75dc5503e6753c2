"""What the server sees: masked inputs look uniform, and its transcript does not depend on x.

Checked here:
1. A single masked vector of a constant input passes a chi-square test on its bytes and a
   balance test on each of the 32 bit positions (it looks like uniform noise).
2. Two runs of a full round with different inputs of the same sum give the server
   transcripts of identical shape (same message types, keys and lengths everywhere); the
   only input-dependent values are the masked vectors, each of which passes the uniformity
   tests above, as does the difference between the two runs' masked vectors of a device
   (masks are fresh per round, so x - x' does not show through); and the unmasked result is
   the same sum in both runs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import chdtrc  # chi-square survival function
from secagg_harness import Fleet, run_round

from fedge.edge_client.secagg import GraphKind, SecAggConfig

D = 1 << 14
ALPHA = 1e-6  # false alarm rate per test; a real bias of the masks is caught far below


def assert_uniform_words(words: np.ndarray) -> None:
    counts = np.bincount(words.view(np.uint8), minlength=256)
    expected = counts.sum() / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chdtrc(255, chi2) > ALPHA, "bytes are not uniform"
    bits = (words[:, None] >> np.arange(32, dtype=np.uint32)) & 1
    ones = bits.sum(axis=0)
    n = words.size
    z = (ones - n / 2) / np.sqrt(n / 4)
    two_sided = math.erfc(float(np.abs(z).max()) / math.sqrt(2))
    assert two_sided > ALPHA / 32, f"bit position {int(np.argmax(np.abs(z)))} is biased"


def _shape(msg: Any) -> Any:
    """Structure of a wire value with byte strings reduced to their length."""
    if isinstance(msg, dict):
        return {k: _shape(v) for k, v in sorted(msg.items())}
    if isinstance(msg, list):
        return [_shape(v) for v in msg]
    if isinstance(msg, bytes):
        return ("bytes", len(msg))
    return msg


def test_masked_input_of_a_constant_is_uniform() -> None:
    config = SecAggConfig("fleet", D, graph=GraphKind.COMPLETE)
    for constant in (0, 0xFFFFFFFF):
        fleet = Fleet.create(config, 3)
        inputs = {u: np.full(D, constant, dtype=np.uint32) for u in fleet.ids}
        outcome = run_round(fleet, inputs)
        masked = [m for d, _, m in outcome.transcript if d == "up" and m["t"] == "secagg/masked"]
        assert len(masked) == 3
        for m in masked:
            assert_uniform_words(np.frombuffer(m["y"], dtype="<u4"))
        # Still exact: the masks cancel to 3 * constant mod 2^32.
        np.testing.assert_array_equal(
            outcome.server.result(), np.full(D, 3 * constant % 2**32, dtype=np.uint32)
        )


def test_server_transcript_does_not_depend_on_the_inputs() -> None:
    config = SecAggConfig("fleet", D, graph=GraphKind.COMPLETE)
    rng = np.random.default_rng(7)
    a = {
        f"dev-{i:03d}": rng.integers(0, 2**32, D, dtype=np.uint64).astype(np.uint32)
        for i in range(4)
    }
    # dev-003 drops before MaskedInput; the other three have the same sum in both runs
    # but very different individual inputs.
    b = {u: np.zeros(D, dtype=np.uint32) for u in a}
    b["dev-000"] = a["dev-000"] + a["dev-001"] + a["dev-002"]
    runs = [
        run_round(Fleet.create(config, 4), inputs, {"masked": {"dev-003"}}) for inputs in (a, b)
    ]
    for run in runs:
        assert run.error is None
    shapes = [[(d, u, _shape(m)) for d, u, m in run.transcript] for run in runs]
    assert shapes[0] == shapes[1]
    masked = [
        {
            u: np.frombuffer(m["y"], dtype="<u4")
            for d, u, m in run.transcript
            if m["t"] == "secagg/masked"
        }
        for run in runs
    ]
    for u in masked[0]:
        assert_uniform_words(masked[0][u])
        assert_uniform_words(masked[1][u])
        assert_uniform_words(masked[0][u] - masked[1][u])
    assert runs[0].server.survivors == runs[1].server.survivors == ("dev-000", "dev-001", "dev-002")
    np.testing.assert_array_equal(runs[0].server.result(), b["dev-000"])
    np.testing.assert_array_equal(runs[1].server.result(), b["dev-000"])
