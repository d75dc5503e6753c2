"""MQTT topic layout: one subtree per device so broker ACLs can isolate devices."""

from __future__ import annotations

import zlib

from fedge.edge_client.errors import ProtocolError
from fedge.edge_client.names import check_name

PREFIX = "fedge/v1"
# The fleet is split into this many wake groups by a hash of the device id, so that a round
# can wake a share of the fleet without the broker delivering its round-open to every device.
WAKE_GROUPS = 64


def _dev(fleet: str, device_id: str) -> str:
    return f"{PREFIX}/{check_name('fleet', fleet)}/dev/{check_name('device id', device_id)}"


def device_up(fleet: str, device_id: str) -> str:
    """Device to server."""
    return f"{_dev(fleet, device_id)}/up"


def device_down(fleet: str, device_id: str) -> str:
    """Server to one device."""
    return f"{_dev(fleet, device_id)}/down"


def device_presence(fleet: str, device_id: str) -> str:
    """Retained presence of one device; its last will says offline."""
    return f"{_dev(fleet, device_id)}/presence"


def broadcast(fleet: str) -> str:
    """Server to every device of the fleet."""
    return f"{PREFIX}/{check_name('fleet', fleet)}/broadcast"


def wake_group(device_id: str) -> int:
    """A device's wake group: a stable hash of its id in ``[0, WAKE_GROUPS)``."""
    return zlib.crc32(check_name("device id", device_id).encode()) % WAKE_GROUPS


def wake(fleet: str, group: int) -> str:
    """Server to the devices of one wake group (round-open messages)."""
    if isinstance(group, bool) or not isinstance(group, int) or not 0 <= group < WAKE_GROUPS:
        raise ProtocolError(f"wake group must be an int in [0, {WAKE_GROUPS}), got {group!r}")
    return f"{PREFIX}/{check_name('fleet', fleet)}/wake/{group}"


def server_up_filter(fleet: str) -> str:
    """What the server subscribes to for device messages."""
    return f"{PREFIX}/{check_name('fleet', fleet)}/dev/+/up"


def server_presence_filter(fleet: str) -> str:
    """What the server subscribes to for presence."""
    return f"{PREFIX}/{check_name('fleet', fleet)}/dev/+/presence"


def parse_device_topic(topic: str) -> tuple[str, str, str]:
    """Split ``fedge/v1/{fleet}/dev/{id}/{kind}`` into (fleet, device_id, kind)."""
    parts = topic.split("/")
    if len(parts) != 6 or f"{parts[0]}/{parts[1]}" != PREFIX or parts[3] != "dev":
        raise ProtocolError(f"not a device topic: {topic!r}")
    return check_name("fleet", parts[2]), check_name("device id", parts[4]), parts[5]
