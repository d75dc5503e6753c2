"""Reads a Linux device's own state (battery, charging, memory, load) for eligibility."""

from __future__ import annotations

import os
from pathlib import Path

from fedge.edge_client.protocol.messages import Eligibility

POWER_SUPPLY = Path("/sys/class/power_supply")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def battery_state(root: Path = POWER_SUPPLY) -> tuple[float, bool]:
    """(battery fraction, charging); a device without a battery counts as full and on mains."""
    batteries = (
        [p for p in root.glob("*") if _read(p / "type") == "Battery"] if root.exists() else []
    )
    if not batteries:
        return 1.0, True
    capacity = _read(batteries[0] / "capacity")
    status = _read(batteries[0] / "status") or ""
    fraction = min(max(int(capacity) / 100.0, 0.0), 1.0) if capacity and capacity.isdigit() else 1.0
    return fraction, status in ("Charging", "Full", "Not charging")


def free_memory_mb(meminfo: Path = Path("/proc/meminfo")) -> int:
    """MemAvailable in MB (0 if unknown)."""
    text = _read(meminfo) or ""
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 0


def is_idle(threshold: float = 0.5) -> bool:
    """Idle when the 1-minute load average per core is below ``threshold``."""
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        return True
    return load1 / max(os.cpu_count() or 1, 1) < threshold


def probe_eligibility(metered: bool = False) -> Eligibility:
    """The device's current eligibility as reported at check-in."""
    battery, charging = battery_state()
    return Eligibility(
        charging=charging,
        unmetered=not metered,
        idle=is_idle(),
        battery=battery,
        free_memory_mb=free_memory_mb(),
    )
