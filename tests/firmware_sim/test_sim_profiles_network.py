"""Tests of firmware_sim.profiles and firmware_sim.network."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from fedge.edge_client.errors import ConfigError
from fedge.firmware_sim.availability import pattern_availability
from fedge.firmware_sim.network import download_time, first_disconnect, transfer_time, upload_time
from fedge.firmware_sim.profiles import (
    MIXES,
    PROFILES,
    Charging,
    assign_profiles,
    get_profile,
    profile_mix,
)

SIX = {"pi-zero-2w", "pi4", "pi5", "android-low", "android-mid", "android-high"}


def test_six_profiles_with_usable_fields() -> None:
    assert set(PROFILES) == SIX
    for name, p in PROFILES.items():
        assert p.name == name
        assert p.compute_factor >= 1.0 and p.memory_mb > 0
        assert p.uplink_bps > 0 and p.downlink_bps >= p.uplink_bps and p.latency_s > 0
        assert 0 <= p.dropout_p < 1 and p.disconnects_per_min >= 0
        assert (p.battery is None) == (p.charging is Charging.MAINS)
        pattern_availability(p.availability, 0)
    assert get_profile("pi-zero-2w").compute_factor > get_profile("pi4").compute_factor
    assert get_profile("pi4").compute_factor > get_profile("pi5").compute_factor


def test_unknown_profile_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown device profile 'pi3'"):
        get_profile("pi3")


def test_bandwidth_changes_upload_time() -> None:
    nbytes = 1_000_000
    zero = upload_time(get_profile("pi-zero-2w"), nbytes)
    high = upload_time(get_profile("android-high"), nbytes)
    assert zero > 4 * high
    p = get_profile("pi4")
    assert upload_time(p, nbytes) == pytest.approx(p.latency_s + nbytes * 8 / p.uplink_bps)
    assert download_time(p, nbytes) == pytest.approx(p.latency_s + nbytes * 8 / p.downlink_bps)
    assert download_time(p, nbytes) < upload_time(p, nbytes)
    assert upload_time(p, 0) == p.latency_s


def test_jitter_is_seeded_and_needs_an_rng() -> None:
    p = get_profile("android-mid")
    a = upload_time(p, 50_000, np.random.default_rng(3), jitter=0.3)
    b = upload_time(p, 50_000, np.random.default_rng(3), jitter=0.3)
    assert a == b and a != upload_time(p, 50_000)
    with pytest.raises(ConfigError, match="needs an rng"):
        upload_time(p, 50_000, jitter=0.3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, 1e6, 0.01), "payload size"),
        ((10, 0.0, 0.01), "bandwidth"),
        ((10, 1e6, -0.1), "latency"),
        ((10, 1e6, math.nan), "latency"),
    ],
)
def test_bad_transfer_parameters(args: tuple[int, float, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        transfer_time(*args)


def test_flaky_link_survival_matches_the_poisson_rate() -> None:
    rng = np.random.default_rng(11)
    rate, duration = 0.5, 120.0
    draws = [first_disconnect(rate, duration, rng) for _ in range(4000)]
    survived = sum(d is None for d in draws) / len(draws)
    assert survived == pytest.approx(math.exp(-rate * duration / 60), abs=0.03)
    assert all(0 <= d < duration for d in draws if d is not None)
    assert first_disconnect(0.0, 1e9, rng) is None
    with pytest.raises(ConfigError, match="disconnect rate"):
        first_disconnect(-1.0, 10.0, rng)


@pytest.mark.parametrize("name", ["default", "pi-heavy", "android-heavy"])
def test_mixes_sum_to_one(name: str) -> None:
    mix = profile_mix(name)
    assert sum(mix.values()) == pytest.approx(1.0)
    assert set(mix) <= SIX
    assert set(MIXES["default"]) == SIX


def test_pi_heavy_and_android_heavy_lean_their_way() -> None:
    def pi_share(name: str) -> float:
        return sum(v for k, v in profile_mix(name).items() if k.startswith("pi"))

    assert pi_share("pi-heavy") > 0.5 > pi_share("android-heavy")
    assert profile_mix("pi5") == {"pi5": 1.0}
    with pytest.raises(ConfigError, match="unknown profile mix"):
        profile_mix("iphone-heavy")


def test_assignment_is_exact_and_deterministic() -> None:
    mix = profile_mix("default")
    names = assign_profiles(200, mix, 5)
    assert names == assign_profiles(200, mix, 5)
    assert names != assign_profiles(200, mix, 6)
    counts = Counter(names)
    assert counts == {k: round(200 * v) for k, v in mix.items()}
    assert assign_profiles(0, mix, 5) == []


@pytest.mark.parametrize(
    ("mix", "message"),
    [
        ({}, "empty"),
        ({"pi4": 0.5}, "sum to 1"),
        ({"pi4": 1.5, "pi5": -0.5}, ">= 0"),
        ({"pi3": 1.0}, "unknown device profile"),
    ],
)
def test_bad_mixes_are_config_errors(mix: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        assign_profiles(10, mix, 0)


def test_battery_drains_when_training_and_charges_on_the_charger() -> None:
    battery = get_profile("android-low").battery
    assert battery is not None
    after_hour = battery.level_after(0.8, train_s=3600, idle_s=0, charging_s=0)
    assert 0.5 < after_hour < 0.8
    assert battery.level_after(0.5, train_s=0, idle_s=0, charging_s=3600) > 0.5
    assert battery.level_after(0.1, train_s=10 * 3600, idle_s=0, charging_s=0) == 0.0
    assert battery.level_after(0.9, train_s=0, idle_s=0, charging_s=10 * 3600) == 1.0
    with pytest.raises(ConfigError):
        battery.level_after(0.5, train_s=-1, idle_s=0, charging_s=0)
