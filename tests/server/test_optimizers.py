"""Server optimizers against a plain float64 transcription of Reddi et al., Algorithm 2."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from fedge.edge_client.protocol.messages import decode_tensor, encode_tensor
from fedge.server.job import ServerOptimizerConfig
from fedge.server.optimizers import ServerOptimizer

SHAPES = [(4, 3), (3,), (2, 2, 2)]

CONFIGS = [
    ServerOptimizerConfig(name="fedavg", lr=1.0),
    ServerOptimizerConfig(name="fedavg", lr=0.5),
    ServerOptimizerConfig(name="fedavgm", lr=1.0, momentum=0.9),
    ServerOptimizerConfig(name="fedavgm", lr=0.3, momentum=0.5),
    ServerOptimizerConfig(name="fedadam", lr=0.03, beta1=0.9, beta2=0.99, epsilon=1e-3),
    ServerOptimizerConfig(name="fedadam", lr=0.1, beta1=0.5, beta2=0.9, epsilon=1e-2),
    ServerOptimizerConfig(name="fedyogi", lr=0.03, beta1=0.9, beta2=0.99, epsilon=1e-3),
    ServerOptimizerConfig(name="fedyogi", lr=0.1, beta1=0.0, beta2=0.5, epsilon=1e-2),
]
IDS = [f"{c.name}-lr{c.lr}" for c in CONFIGS]


def reference(c: ServerOptimizerConfig, x0: list[np.ndarray],
              deltas: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """Weights after each step, written straight from the paper (Delta = mean client new - old).

    FedAvg: x += eta * Delta.  FedAvgM: m = beta * m + Delta; x += eta * m.
    FedAdam / FedYogi: m = b1 m + (1 - b1) Delta; v per rule; x += eta m / (sqrt(v) + tau),
    with m_{-1} = 0 and v_{-1} = tau^2.
    """
    x = [w.astype(np.float64) for w in x0]
    m = [np.zeros_like(w) for w in x]
    v = [np.full_like(w, c.epsilon**2) for w in x]
    out = []
    for step in deltas:
        for i, d64 in enumerate(step):
            d = d64.astype(np.float64)
            if c.name == "fedavg":
                x[i] = x[i] + c.lr * d
                continue
            if c.name == "fedavgm":
                m[i] = c.momentum * m[i] + d
                x[i] = x[i] + c.lr * m[i]
                continue
            m[i] = c.beta1 * m[i] + (1 - c.beta1) * d
            if c.name == "fedadam":
                v[i] = c.beta2 * v[i] + (1 - c.beta2) * d**2
            else:
                v[i] = v[i] - (1 - c.beta2) * d**2 * np.sign(v[i] - d**2)
            x[i] = x[i] + c.lr * m[i] / (np.sqrt(v[i]) + c.epsilon)
        out.append([w.copy() for w in x])
    return out


def problem(seed: int, steps: int) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    rng = np.random.default_rng(seed)
    x0 = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    # Deltas of varying scale (some large against tau, some zero) so that Yogi's sign flips.
    deltas = [[(rng.normal(size=s) * rng.choice([0.0, 1e-3, 0.05, 1.0])).astype(np.float32)
               for s in SHAPES] for _ in range(steps)]
    return x0, deltas


def run(opt: ServerOptimizer, x: list[np.ndarray], deltas: list[list[np.ndarray]]
        ) -> list[list[np.ndarray]]:
    out = []
    for d in deltas:
        x = opt.apply(x, d)
        out.append(x)
    return out


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_paper_over_several_steps(config: ServerOptimizerConfig, seed: int) -> None:
    x0, deltas = problem(seed, steps=8)
    got = run(ServerOptimizer(config), x0, deltas)
    want = reference(config, x0, deltas)
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        for gi, wi in zip(g, w, strict=True):
            assert gi.dtype == np.float32 and gi.shape == wi.shape
            np.testing.assert_allclose(gi, wi, rtol=1e-5, atol=1e-5, err_msg=f"step {step}")


def test_yogi_and_adam_differ_when_the_second_moment_must_grow() -> None:
    x0 = [np.zeros(3, np.float32)]
    deltas = [[np.array([1.0, -2.0, 0.5], np.float32)]] * 3
    adam = run(ServerOptimizer(ServerOptimizerConfig(name="fedadam", lr=0.1)), x0, deltas)
    yogi = run(ServerOptimizer(ServerOptimizerConfig(name="fedyogi", lr=0.1)), x0, deltas)
    assert not np.allclose(adam[-1][0], yogi[-1][0])


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_state_checkpoint_restores_bit_identically(config: ServerOptimizerConfig) -> None:
    x0, deltas = problem(5, steps=6)
    straight = run(ServerOptimizer(config), x0, deltas)

    first = ServerOptimizer(config)
    x = run(first, x0, deltas[:3])[-1]
    keys, arrays = first.state_arrays()
    # through the wire format, as the coordinator checkpoints it
    blob = msgpack.packb({"keys": keys, "tensors": [encode_tensor(a) for a in arrays]},
                         use_bin_type=True)
    raw = msgpack.unpackb(blob, raw=False)
    resumed = ServerOptimizer(config)
    resumed.load_state_arrays(raw["keys"], [decode_tensor(t) for t in raw["tensors"]])
    after = run(resumed, x, deltas[3:])
    for a, b in zip(after, straight[3:], strict=True):
        for ai, bi in zip(a, b, strict=True):
            assert ai.dtype == bi.dtype and np.array_equal(ai, bi)


@pytest.mark.parametrize("name, expected", [
    ("fedavg", []), ("fedavgm", ["m"] * 3), ("fedadam", ["m"] * 3 + ["v"] * 3),
    ("fedyogi", ["m"] * 3 + ["v"] * 3),
])
def test_state_layout(name: str, expected: list[str]) -> None:
    opt = ServerOptimizer(ServerOptimizerConfig(name=name))
    x0, deltas = problem(0, steps=1)
    opt.apply(x0, deltas[0])
    keys, arrays = opt.state_arrays()
    assert keys == expected
    assert [a.shape for a in arrays] == SHAPES * (len(expected) // 3)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_a_taken_checkpoint_is_not_changed_by_later_steps(config: ServerOptimizerConfig) -> None:
    x0, deltas = problem(3, steps=3)
    opt = ServerOptimizer(config)
    x = opt.apply(x0, deltas[0])
    _, arrays = opt.state_arrays()
    snapshot = [a.copy() for a in arrays]
    opt.apply(x, deltas[1])
    assert all(np.array_equal(a, s) for a, s in zip(arrays, snapshot, strict=True))


def test_inputs_are_not_modified() -> None:
    for config in CONFIGS:
        x0, deltas = problem(4, steps=2)
        x_copy, d_copy = [w.copy() for w in x0], [d.copy() for d in deltas[0]]
        ServerOptimizer(config).apply(x0, deltas[0])
        assert all(np.array_equal(a, b) for a, b in zip(x0, x_copy, strict=True))
        assert all(np.array_equal(a, b) for a, b in zip(deltas[0], d_copy, strict=True))
