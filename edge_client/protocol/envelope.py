"""msgpack envelopes: versioned, typed, size-limited, with replay protection."""

from __future__ import annotations

import math
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import msgpack

from edge_client.errors import ProtocolError

PROTOCOL_VERSION = 1


@dataclass(frozen=True)
class Limits:
    """Upper bounds applied to every decoded message."""

    max_message_bytes: int = 16 * 1024 * 1024
    max_tensor_elements: int = 50_000_000
    max_clock_skew_s: float = 600.0
    max_string_len: int = 4096
    max_list_len: int = 1_000_000


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Envelope:
    """One wire message: header fields plus a type-specific body."""

    type: str
    body: dict[str, Any]
    sender: str
    job_id: str | None = None
    round_id: int | None = None
    msg_id: bytes = field(default_factory=lambda: os.urandom(12))
    ts: float = field(default_factory=time.time)
    version: int = PROTOCOL_VERSION

    def pack(self) -> bytes:
        """Serialise with msgpack (bytes stay bytes)."""
        return msgpack.packb(
            {
                "v": self.version,
                "t": self.type,
                "id": self.msg_id,
                "from": self.sender,
                "job": self.job_id,
                "round": self.round_id,
                "ts": self.ts,
                "body": self.body,
            },
            use_bin_type=True,
        )


def _expect(value: Any, kind: type | tuple[type, ...], name: str) -> Any:
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise ProtocolError(f"field {name!r} must be {kind}, got bool")
    if not isinstance(value, kind):
        raise ProtocolError(f"field {name!r} has type {type(value).__name__}, expected {kind}")
    return value


def unpack(
    data: bytes, limits: Limits = DEFAULT_LIMITS, now: float | None = None, check_time: bool = True
) -> Envelope:
    """Parse and validate the envelope header; bodies are validated by `messages.parse`.

    ``check_time=False`` is for retained messages and last wills, which may be old by design.
    """
    if len(data) > limits.max_message_bytes:
        raise ProtocolError(
            f"message of {len(data)} bytes exceeds the limit of {limits.max_message_bytes}"
        )
    try:
        raw = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=limits.max_message_bytes,
            max_bin_len=limits.max_message_bytes,
            max_array_len=limits.max_list_len,
            max_map_len=limits.max_list_len,
        )
    except Exception as exc:  # msgpack raises several unrelated exception types
        raise ProtocolError(f"not a msgpack message: {exc}") from exc
    if not isinstance(raw, dict):
        raise ProtocolError("message must be a msgpack map")
    version = _expect(raw.get("v"), int, "v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {version} (this side speaks 1)")
    msg_type = _expect(raw.get("t"), str, "t")
    msg_id = _expect(raw.get("id"), bytes, "id")
    if not 8 <= len(msg_id) <= 32:
        raise ProtocolError("message id must be 8-32 bytes")
    sender = _expect(raw.get("from"), str, "from")
    if len(sender) > 64:
        raise ProtocolError("sender too long")
    job = raw.get("job")
    if job is not None:
        _expect(job, str, "job")
    rnd = raw.get("round")
    if rnd is not None:
        _expect(rnd, int, "round")
        if rnd < 0:
            raise ProtocolError("round must be >= 0")
    ts = float(_expect(raw.get("ts"), (int, float), "ts"))
    if not math.isfinite(ts):
        raise ProtocolError("field 'ts' is not a finite number: stale or replayed")
    now = time.time() if now is None else now
    if check_time and abs(ts - now) > limits.max_clock_skew_s:
        raise ProtocolError(f"timestamp {ts:.0f} is {ts - now:+.0f} s from now: stale or replayed")
    body = _expect(raw.get("body"), dict, "body")
    return Envelope(
        type=msg_type,
        body=body,
        sender=sender,
        job_id=job,
        round_id=rnd,
        msg_id=msg_id,
        ts=ts,
        version=version,
    )


class ReplayGuard:
    """Refuses any message id seen twice from the same sender within the replay window.

    Each sender has its own bounded memory, so one device flooding ids cannot evict the ids
    of others (and so make their messages replayable).
    """

    def __init__(self, window_s: float = DEFAULT_LIMITS.max_clock_skew_s, per_sender: int = 4096):
        self._window_s = window_s
        self._per_sender = per_sender
        self._seen: dict[str, OrderedDict[bytes, float]] = {}

    def check(self, envelope: Envelope, now: float | None = None) -> None:
        """Raise ProtocolError if this message id was already accepted from this sender."""
        now = time.time() if now is None else now
        seen = self._seen.setdefault(envelope.sender, OrderedDict())
        while seen:
            oldest_id, seen_at = next(iter(seen.items()))
            if now - seen_at <= 2 * self._window_s and len(seen) < self._per_sender:
                break
            seen.pop(oldest_id)
        if envelope.msg_id in seen:
            raise ProtocolError(
                f"replayed message id {envelope.msg_id.hex()} from {envelope.sender}"
            )
        seen[envelope.msg_id] = now
