"""Round settings: validation and wire form."""

from __future__ import annotations

import pytest

from fedge.edge_client.errors import SecAggError
from fedge.edge_client.secagg import GraphKind, SecAggConfig


def test_config_round_trips_and_computes_params() -> None:
    config = SecAggConfig("fleet", 1000, dropout_rate=0.123456789, corrupt_fraction=0.05)
    assert config.dropout_rate == 0.123457  # carried at ppm precision
    again = SecAggConfig.from_wire(config.to_wire())
    assert again == config
    assert config.graph_params(1000) == again.graph_params(1000)
    classic = SecAggConfig("fleet", 10, graph=GraphKind.COMPLETE)
    assert classic.graph_params(1000)[0] == 999
    assert SecAggConfig.from_wire(classic.to_wire()).graph is GraphKind.COMPLETE


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fleet": "a b"},
        {"dimension": 0},
        {"dimension": True},
        {"dropout_rate": 1.0},
        {"corrupt_fraction": -0.1},
        {"security_bits": 0},
        {"min_clients": 1},
        {"graph": "harary"},
    ],
)
def test_config_validation(kwargs: dict) -> None:
    base = {"fleet": "fleet", "dimension": 10}
    with pytest.raises(SecAggError):
        SecAggConfig(**{**base, **kwargs})


def test_config_wire_validation() -> None:
    wire = SecAggConfig("fleet", 10).to_wire()
    for key, value in [("dim", "10"), ("graph", "ring"), ("sec_bits", 1.5)]:
        with pytest.raises(SecAggError):
            SecAggConfig.from_wire({**wire, key: value})
    with pytest.raises(SecAggError, match="keys"):
        SecAggConfig.from_wire({k: v for k, v in wire.items() if k != "dim"})
