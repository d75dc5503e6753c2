"""The privacy benchmark's noise calibration: the smallest z whose epsilon fits the target."""

from __future__ import annotations

import pytest

from fedge.edge_client.errors import ConfigError
from fedge.tools.bench.privacy import QUICK, calibrate_z, epsilon_function


@pytest.mark.parametrize("mode", ["central", "distributed"])
def test_calibrated_z_is_the_smallest_that_fits(mode: str) -> None:
    epsilon = epsilon_function(QUICK, mode, dim=5258)  # cnn-fmnist's trainable parameters
    target = 4.0
    z = calibrate_z(epsilon, target)
    assert epsilon(z) <= target
    assert epsilon(z / 1.002) > target  # 0.1 % less noise would exceed the budget


def test_unreachable_target_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no noise multiplier"):
        calibrate_z(lambda z: 100.0, 1.0)
