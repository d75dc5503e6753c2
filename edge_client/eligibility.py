"""Eligibility rules: when a device may train. One definition, read by devices and the server.

A device's owner sets rules in ``device.toml`` ``[eligibility]`` (the device then does not check
in); a job sets the same rules in ``job.toml`` ``[selection]`` (the server then answers a
check-in with a retry window). Both ask `ineligibility` and get the same reason text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedge.edge_client.protocol.messages import Eligibility
from fedge.edge_client.tables import Settings, check


@dataclass(frozen=True)
class EligibilityRules(Settings):
    """What a device's state must be for it to train (all off by default)."""

    SECTION: ClassVar[str] = "eligibility"
    require_charging: bool = False
    require_unmetered: bool = False
    require_idle: bool = False
    min_battery: float = 0.0
    min_free_memory_mb: int = 0

    def check(self) -> None:
        check(
            0.0 <= self.min_battery <= 1.0 and self.min_free_memory_mb >= 0,
            "eligibility.min_battery must be in [0, 1] and min_free_memory_mb >= 0",
        )


def ineligibility(state: Eligibility, rules: EligibilityRules) -> str | None:
    """Why a device in ``state`` may not train under ``rules``, or None when it may."""
    if rules.require_charging and not state.charging:
        return "not charging"
    if rules.require_unmetered and not state.unmetered:
        return "on a metered network"
    if rules.require_idle and not state.idle:
        return "not idle"
    if state.battery < rules.min_battery:
        return f"battery {state.battery:.0%} below {rules.min_battery:.0%}"
    if state.free_memory_mb < rules.min_free_memory_mb:
        return f"free memory {state.free_memory_mb} MB below {rules.min_free_memory_mb} MB"
    return None
