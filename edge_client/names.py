"""Names that become MQTT topic segments (fleet and device ids): one rule, checked everywhere.

It lives outside the protocol package because identity certificates, SecAgg messages and
config files check names too, and the protocol package imports those.
"""

from __future__ import annotations

import re

from fedge.edge_client.errors import ProtocolError

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_name(kind: str, value: str) -> str:
    """Return ``value`` if it is a safe topic segment (fleet or device id), else raise."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ProtocolError(f"invalid {kind} {value!r}: use 1-64 of [A-Za-z0-9_.-]")
    return value
