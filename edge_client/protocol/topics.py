"""MQTT topic layout: one subtree per device so broker ACLs can isolate devices."""

from __future__ import annotations

import re

from edge_client.errors import ProtocolError

PREFIX = "fedge/v1"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_name(kind: str, value: str) -> str:
    """Return ``value`` if it is a safe topic segment (fleet or device id), else raise."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ProtocolError(f"invalid {kind} {value!r}: use 1-64 of [A-Za-z0-9_.-]")
    return value


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
