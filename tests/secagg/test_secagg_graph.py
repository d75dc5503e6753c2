"""Harary neighbourhoods and the (k, t) choice."""

from __future__ import annotations

import random
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.edge_client.errors import SecAggError
from fedge.edge_client.secagg import (
    choose_graph_params,
    complete_graph_params,
    neighbourhoods,
    neighbours_of,
)
from fedge.edge_client.secagg.graph import binomial_tails


def _ids(n: int) -> list[str]:
    return [f"d{i:04d}" for i in range(n)]


def _connected(graph: dict[str, frozenset[str]], alive: set[str]) -> bool:
    if not alive:
        return True
    start = next(iter(alive))
    seen, queue = {start}, deque([start])
    while queue:
        for v in graph[queue.popleft()] & alive:
            if v not in seen:
                seen.add(v)
                queue.append(v)
    return seen == alive


@settings(max_examples=40, deadline=None)
@given(n=st.integers(4, 80), data=st.data(), seed=st.binary(min_size=32, max_size=32))
def test_harary_is_k_regular_symmetric_connected(n: int, data: st.DataObject, seed: bytes) -> None:
    k = data.draw(st.sampled_from(range(2, n - 1, 2)))
    ids = _ids(n)
    graph = neighbourhoods(ids, k, seed)
    assert set(graph) == set(ids)
    for u, nbrs in graph.items():
        assert len(nbrs) == k and u not in nbrs
        assert all(u in graph[v] for v in nbrs)
    assert _connected(graph, set(ids))
    assert graph == neighbourhoods(list(reversed(ids)), k, seed)  # deterministic, order-free
    some = ids[n // 2]
    assert neighbours_of(ids, k, seed, some) == graph[some]


def test_harary_depends_on_the_seed() -> None:
    ids = _ids(50)
    a = neighbourhoods(ids, 6, b"\x01" * 32)
    b = neighbourhoods(ids, 6, b"\x02" * 32)
    assert a != b


def test_complete_graph_and_bad_degrees() -> None:
    ids = _ids(7)
    graph = neighbourhoods(ids, 6, bytes(32))
    assert all(graph[u] == set(ids) - {u} for u in ids)
    with pytest.raises(SecAggError, match="even k"):
        neighbourhoods(ids, 3, bytes(32))
    with pytest.raises(SecAggError, match="impossible"):
        neighbourhoods(ids, 7, bytes(32))
    with pytest.raises(SecAggError, match="not in the roster"):
        neighbours_of(ids, 2, bytes(32), "stranger")


def test_binomial_tails() -> None:
    tails = binomial_tails(4, 0.5)
    assert tails[0] == pytest.approx(1.0)
    assert tails[4] == pytest.approx(1 / 16)
    assert tails[3] == pytest.approx(5 / 16)
    assert tails[5] == 0.0
    assert binomial_tails(3, 0.0)[1] == 0.0 and binomial_tails(3, 1.0)[3] == 1.0
    assert binomial_tails(3000, 0.3)[1500] < 1e-100  # no overflow for large n


DROPOUTS = [0.0, 0.05, 0.1, 0.2, 0.3]
CORRUPT = [0.0, 0.02, 0.05]


@pytest.mark.parametrize("n", [30, 100, 300])
def test_params_are_monotone_and_safe(n: int) -> None:
    for c in CORRUPT:
        ks = [choose_graph_params(n, d, c)[0] for d in DROPOUTS]
        assert ks == sorted(ks), f"k not monotone in dropout (n={n}, corrupt={c}): {ks}"
    for d in DROPOUTS:
        ks = [choose_graph_params(n, d, c)[0] for c in CORRUPT]
        assert ks == sorted(ks), f"k not monotone in corrupt fraction: {ks}"
        ks = [choose_graph_params(n, d, 0.02, security_bits=s)[0] for s in (20, 40, 80)]
        assert ks == sorted(ks)
        for c in CORRUPT:
            k, t = choose_graph_params(n, d, c)
            assert 2 * t > k and t <= k <= n - 1


def test_params_grow_slowly_with_n() -> None:
    ks = [choose_graph_params(n, 0.1, 0.0)[0] for n in (50, 100, 1000, 10_000, 100_000)]
    assert ks == sorted(ks)
    assert ks[-1] < 100  # logarithmic: far below n


def test_small_fleets_fall_back_to_the_complete_graph() -> None:
    assert choose_graph_params(10, 0.1, 0.05) == complete_graph_params(10, 0.05) == (9, 5)
    assert complete_graph_params(10, 0.3) == (9, 7)  # 3 corrupt: 2t > 9 + 3
    with pytest.raises(SecAggError, match="no safe threshold"):
        complete_graph_params(4, 0.9)
    for bad in [(1, 0.1, 0.0), (10, 1.0, 0.0), (10, 0.1, -0.1)]:
        with pytest.raises(SecAggError):
            choose_graph_params(*bad)


def test_chosen_params_survive_simulated_dropouts() -> None:
    """Monte Carlo: with the chosen (k, t), random dropouts at the planned rate leave the
    survivors connected and every device with >= t surviving neighbours."""
    n, rate = 300, 0.2
    k, t = choose_graph_params(n, rate, 0.0)
    assert k < n - 1
    ids = _ids(n)
    graph = neighbourhoods(ids, k, b"\x07" * 32)
    rng = random.Random(3)
    for _ in range(30):
        alive = {u for u in ids if rng.random() >= rate}
        assert _connected(graph, alive)
        assert all(len(graph[u] & alive) >= t for u in ids)
