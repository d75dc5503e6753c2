"""Simulated network: transfer times from a device profile, and a flaky-link disconnect model."""

from __future__ import annotations

import math

import numpy as np

from fedge.edge_client.errors import ConfigError
from fedge.firmware_sim.profiles import DeviceProfile


def transfer_time(
    nbytes: int,
    bandwidth_bps: float,
    latency_s: float,
    rng: np.random.Generator | None = None,
    jitter: float = 0.0,
) -> float:
    """Return the seconds a transfer takes: ``latency_s + nbytes * 8 / bandwidth_bps``.

    Parameters
    ----------
    nbytes : int
        Payload size in bytes (>= 0).
    bandwidth_bps : float
        Bandwidth in bit/s (> 0).
    latency_s : float
        One-way latency in seconds (>= 0).
    rng : np.random.Generator, optional
        Needed when ``jitter > 0``.
    jitter : float
        Sigma of a LogNormal(0, jitter) factor multiplying the whole time (0 = exact).

    Returns
    -------
    float
        Transfer time in simulated seconds.
    """
    if nbytes < 0:
        raise ConfigError(f"payload size must be >= 0 bytes, got {nbytes}")
    if not (math.isfinite(bandwidth_bps) and bandwidth_bps > 0):
        raise ConfigError(f"bandwidth must be a finite number > 0 bit/s, got {bandwidth_bps}")
    if not (math.isfinite(latency_s) and latency_s >= 0):
        raise ConfigError(f"latency must be a finite number >= 0 s, got {latency_s}")
    if not (math.isfinite(jitter) and jitter >= 0):
        raise ConfigError(f"jitter must be a finite number >= 0, got {jitter}")
    seconds = latency_s + nbytes * 8.0 / bandwidth_bps
    if jitter == 0:
        return seconds
    if rng is None:
        raise ConfigError("a jittered transfer time needs an rng")
    return seconds * float(rng.lognormal(0.0, jitter))


def upload_time(
    profile: DeviceProfile,
    nbytes: int,
    rng: np.random.Generator | None = None,
    jitter: float = 0.0,
) -> float:
    """Return the seconds ``profile`` needs to send ``nbytes`` to the server."""
    return transfer_time(nbytes, profile.uplink_bps, profile.latency_s, rng, jitter)


def download_time(
    profile: DeviceProfile,
    nbytes: int,
    rng: np.random.Generator | None = None,
    jitter: float = 0.0,
) -> float:
    """Return the seconds ``profile`` needs to receive ``nbytes`` from the server."""
    return transfer_time(nbytes, profile.downlink_bps, profile.latency_s, rng, jitter)


def first_disconnect(
    disconnects_per_min: float, duration_s: float, rng: np.random.Generator
) -> float | None:
    """Draw when a flaky link first drops within ``duration_s`` seconds online.

    Disconnects form a Poisson process with ``disconnects_per_min`` events per minute, so
    the link survives ``duration_s`` with probability ``exp(-rate * duration_s / 60)``.

    Returns
    -------
    float or None
        Seconds from the start until the disconnect, or None if the link stays up.
    """
    if not (math.isfinite(disconnects_per_min) and disconnects_per_min >= 0):
        raise ConfigError(
            f"disconnect rate must be a finite number >= 0, got {disconnects_per_min}"
        )
    if not (math.isfinite(duration_s) and duration_s >= 0):
        raise ConfigError(f"online duration must be a finite number >= 0 s, got {duration_s}")
    if disconnects_per_min == 0:
        return None
    at = float(rng.exponential(60.0 / disconnects_per_min))
    return at if at < duration_s else None
