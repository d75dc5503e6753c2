"""Simulated device classes (Raspberry Pi and Android tiers), their fleet mixes and assignment."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType

import numpy as np

from fedge.edge_client.errors import ConfigError
from fedge.firmware_sim.partition import apportion


class Charging(Enum):
    """Where a device's power comes from."""

    MAINS = "mains"
    """Always powered, no battery to drain."""
    WHILE_AVAILABLE = "while-available"
    """On a charger exactly while its availability window is open."""


@dataclass(frozen=True)
class Battery:
    """Battery of a device, with levels as fractions of a full charge.

    Attributes
    ----------
    capacity_mah : int
        Nominal capacity (informational; the rates below are already fractions).
    train_drain_per_s : float
        Fraction of a full battery used per second of on-device training.
    idle_drain_per_s : float
        Fraction used per second while not training and not charging.
    charge_per_s : float
        Fraction gained per second while on the charger.
    """

    capacity_mah: int
    train_drain_per_s: float
    idle_drain_per_s: float
    charge_per_s: float

    def level_after(
        self, level: float, *, train_s: float, idle_s: float, charging_s: float
    ) -> float:
        """Return the level after training, idle and charging time, clipped to [0, 1]."""
        if min(train_s, idle_s, charging_s) < 0:
            raise ConfigError("battery durations must be >= 0")
        delta = (
            charging_s * self.charge_per_s
            - train_s * self.train_drain_per_s
            - idle_s * self.idle_drain_per_s
        )
        return float(min(1.0, max(0.0, level + delta)))


@dataclass(frozen=True)
class DeviceProfile:
    """What one class of device looks like to the simulator.

    Attributes
    ----------
    name : str
        Key in :data:`PROFILES`.
    compute_factor : float
        Simulated training time = measured training wall time on this host x compute_factor.
    memory_mb : int
        Memory budget of the training process (not the installed RAM).
    uplink_bps, downlink_bps : float
        Sustained bandwidth to and from the server, bit/s.
    latency_s : float
        One-way latency to the server, s.
    charging : Charging
        Power source.
    battery : Battery or None
        None for mains-powered devices.
    availability : str
        Daily pattern name understood by ``firmware_sim.availability``.
    dropout_p : float
        Probability of dropping out mid-round once selected.
    disconnects_per_min : float
        Rate of network disconnects while online (Poisson), per minute.
    """

    name: str
    compute_factor: float
    memory_mb: int
    uplink_bps: float
    downlink_bps: float
    latency_s: float
    charging: Charging
    battery: Battery | None
    availability: str
    dropout_p: float
    disconnects_per_min: float


_MBIT = 1_000_000.0
_HOUR = 3600.0

_PHONE_IDLE_DRAIN = 0.01 / _HOUR  # 1 %/h with the screen off

PROFILES: Mapping[str, DeviceProfile] = MappingProxyType(
    {
        p.name: p
        for p in (
            DeviceProfile(
                name="pi-zero-2w",
                compute_factor=10.0,
                memory_mb=256,
                uplink_bps=5 * _MBIT,
                downlink_bps=20 * _MBIT,
                latency_s=0.040,
                charging=Charging.MAINS,
                battery=None,
                availability="always",
                dropout_p=0.05,
                disconnects_per_min=0.02,
            ),
            DeviceProfile(
                name="pi4",
                compute_factor=3.0,
                memory_mb=2048,
                uplink_bps=20 * _MBIT,
                downlink_bps=100 * _MBIT,
                latency_s=0.020,
                charging=Charging.MAINS,
                battery=None,
                availability="always",
                dropout_p=0.02,
                disconnects_per_min=0.005,
            ),
            DeviceProfile(
                name="pi5",
                compute_factor=1.5,
                memory_mb=4096,
                uplink_bps=40 * _MBIT,
                downlink_bps=200 * _MBIT,
                latency_s=0.015,
                charging=Charging.MAINS,
                battery=None,
                availability="always",
                dropout_p=0.02,
                disconnects_per_min=0.005,
            ),
            DeviceProfile(
                name="android-low",
                compute_factor=4.0,
                memory_mb=256,
                uplink_bps=2 * _MBIT,
                downlink_bps=10 * _MBIT,
                latency_s=0.080,
                charging=Charging.WHILE_AVAILABLE,
                battery=Battery(3000, 2.0 / 11.1 / _HOUR, _PHONE_IDLE_DRAIN, 0.40 / _HOUR),
                availability="night-charging",
                dropout_p=0.15,
                disconnects_per_min=0.05,
            ),
            DeviceProfile(
                name="android-mid",
                compute_factor=2.0,
                memory_mb=512,
                uplink_bps=10 * _MBIT,
                downlink_bps=50 * _MBIT,
                latency_s=0.050,
                charging=Charging.WHILE_AVAILABLE,
                battery=Battery(4500, 3.0 / 17.3 / _HOUR, _PHONE_IDLE_DRAIN, 0.70 / _HOUR),
                availability="office-hours-idle",
                dropout_p=0.08,
                disconnects_per_min=0.02,
            ),
            DeviceProfile(
                name="android-high",
                compute_factor=1.0,
                memory_mb=1024,
                uplink_bps=30 * _MBIT,
                downlink_bps=150 * _MBIT,
                latency_s=0.030,
                charging=Charging.WHILE_AVAILABLE,
                battery=Battery(5000, 4.0 / 19.3 / _HOUR, _PHONE_IDLE_DRAIN, 1.20 / _HOUR),
                availability="random-sessions",
                dropout_p=0.05,
                disconnects_per_min=0.01,
            ),
        )
    }
)

MIXES: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {
        "default": MappingProxyType(
            {
                "pi-zero-2w": 0.10,
                "pi4": 0.15,
                "pi5": 0.10,
                "android-low": 0.25,
                "android-mid": 0.25,
                "android-high": 0.15,
            }
        ),
        "pi-heavy": MappingProxyType(
            {
                "pi-zero-2w": 0.30,
                "pi4": 0.35,
                "pi5": 0.20,
                "android-low": 0.05,
                "android-mid": 0.05,
                "android-high": 0.05,
            }
        ),
        "android-heavy": MappingProxyType(
            {
                "pi-zero-2w": 0.05,
                "pi4": 0.05,
                "pi5": 0.05,
                "android-low": 0.35,
                "android-mid": 0.35,
                "android-high": 0.15,
            }
        ),
    }
)


def get_profile(name: str) -> DeviceProfile:
    """Return the profile called ``name``; ConfigError lists the known names otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(
            f"unknown device profile {name!r}; known: {', '.join(PROFILES)}"
        ) from None


def profile_mix(name: str) -> dict[str, float]:
    """Return the fleet mix called ``name`` as {profile name: share}, shares summing to 1.

    ``name`` is ``default``, ``pi-heavy``, ``android-heavy``, or a single profile name
    (a fleet of that profile only).
    """
    if name in MIXES:
        return dict(MIXES[name])
    if name in PROFILES:
        return {name: 1.0}
    raise ConfigError(
        f"unknown profile mix {name!r}; use one of {', '.join(MIXES)} or a profile name "
        f"({', '.join(PROFILES)})"
    )


def _check_mix(mix: Mapping[str, float]) -> None:
    if not mix:
        raise ConfigError("profile mix is empty")
    for name, share in mix.items():
        get_profile(name)
        if not (np.isfinite(share) and share >= 0):
            raise ConfigError(
                f"profile mix share of {name!r} must be a finite number >= 0, got {share}"
            )
    total = float(sum(mix.values()))
    if abs(total - 1.0) > 1e-9:
        raise ConfigError(f"profile mix shares must sum to 1, got {total}")


def assign_profiles(n: int, mix: Mapping[str, float], seed: int | Sequence[int]) -> list[str]:
    """Give each of ``n`` devices a profile name, in the proportions of ``mix``.

    Counts are exact (largest-remainder rounding of ``n * share``), the order is shuffled,
    and the result depends only on (n, mix, seed).

    Parameters
    ----------
    n : int
        Number of devices (>= 0).
    mix : mapping of str to float
        Profile name -> share, shares summing to 1.
    seed : int or sequence of int
        Seed of the shuffle.

    Returns
    -------
    list of str
        Profile name of device 0..n-1.
    """
    if n < 0:
        raise ConfigError(f"number of devices must be >= 0, got {n}")
    _check_mix(mix)
    names = sorted(mix)
    counts = apportion(n, np.array([mix[k] for k in names]))
    order = np.random.default_rng(seed).permutation(n)
    flat = np.repeat(np.arange(len(names)), counts)
    return [names[i] for i in flat[order]]
