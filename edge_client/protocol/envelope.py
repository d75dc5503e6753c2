"""msgpack envelopes: versioned, typed, size-limited, with replay protection.

Since protocol 2 the header is packed positionally, to keep the fixed cost of a message small
(docs/protocol.md explains each choice). Protocol 5 packs ``[version, type code, id, job, round,
ts, body]``: the sender is not packed, because the MQTT topic a message arrives on names it
(a device's own topics; the broker's ACLs decide who may publish there), and ``ts`` is whole
Unix seconds. Protocol 6 keeps that header; a task's ``secagg`` and ``dp`` settings became
typed sub-messages with a fixed set of checked fields.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import msgpack

from fedge.edge_client.errors import ProtocolError

PROTOCOL_VERSION = 6
MSG_ID_BYTES = 8
SERVER_ID = "server"  # the sender of everything a device reads
HEADER_FIELDS = ("version", "type", "id", "job", "round", "ts", "body")
# Wire codes of the message types; a code is never reused for another type.
TYPE_CODES: dict[str, int] = {
    "checkin": 1,
    "task": 2,
    "retry": 3,
    "update": 4,
    "eval_result": 5,
    "ack": 6,
    "error": 7,
    "secagg": 8,
    "presence": 9,
    "job_state": 10,
    "round_open": 11,
}
_TYPE_NAMES = {code: name for name, code in TYPE_CODES.items()}


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
    """One wire message: header fields plus a type-specific body (a map, or an array).

    ``sender`` is not packed: the receiver knows it from the topic and passes it to `unpack`,
    so it is empty on an envelope built for sending.
    """

    type: str
    body: dict[str, Any] | list[Any]
    sender: str = ""
    job_id: str | None = None
    round_id: int | None = None
    msg_id: bytes = field(default_factory=lambda: os.urandom(MSG_ID_BYTES))
    ts: int = field(default_factory=lambda: int(time.time()))
    version: int = PROTOCOL_VERSION

    def pack(self) -> bytes:
        """Serialise as a positional msgpack array (bytes stay bytes)."""
        code = TYPE_CODES.get(self.type)
        if code is None:
            raise ProtocolError(f"unknown message type {self.type!r}")
        header = [self.version, code, self.msg_id, self.job_id, self.round_id, self.ts]
        return msgpack.packb([*header, self.body], use_bin_type=True)


def _expect(value: Any, kind: type | tuple[type, ...], name: str) -> Any:
    expected = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise ProtocolError(f"field {name!r} must be {expected}, got bool")
    if not isinstance(value, kind):
        raise ProtocolError(f"field {name!r} has type {type(value).__name__}, expected {expected}")
    return value


def _decode(data: bytes, limits: Limits) -> Any:
    """The msgpack object of ``data``, within the size limits (ProtocolError otherwise)."""
    if len(data) > limits.max_message_bytes:
        raise ProtocolError(
            f"message of {len(data)} bytes exceeds the limit of {limits.max_message_bytes}"
        )
    try:
        return msgpack.unpackb(
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


def unpack(
    data: bytes,
    sender: str,
    limits: Limits = DEFAULT_LIMITS,
    now: float | None = None,
    check_time: bool = True,
) -> Envelope:
    """Parse and validate the envelope header; bodies are validated by `messages.parse`.

    ``sender`` is who the topic the message came on belongs to: a device for its ``up`` and
    ``presence`` topics, the server for everything a device reads.
    ``check_time=False`` is for retained messages and last wills, which may be old by design.
    """
    raw = _decode(data, limits)
    if isinstance(raw, dict):  # protocol 1 envelopes were maps
        raise ProtocolError(
            f"unsupported protocol version 1 (a map envelope; this side speaks {PROTOCOL_VERSION})"
        )
    if not isinstance(raw, list) or not raw:
        raise ProtocolError("message must be a non-empty msgpack array")
    version = _expect(raw[0], int, "version")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"unsupported protocol version {version} (this side speaks {PROTOCOL_VERSION})"
        )
    if len(raw) != len(HEADER_FIELDS):
        raise ProtocolError(f"envelope has {len(raw)} fields, expected {len(HEADER_FIELDS)}")
    _, code, msg_id, job, rnd, ts, body = raw
    msg_type = _TYPE_NAMES.get(_expect(code, int, "type"))
    if msg_type is None:
        raise ProtocolError(f"unknown message type code {code}")
    _expect(msg_id, bytes, "id")
    if len(msg_id) != MSG_ID_BYTES:
        raise ProtocolError(f"field 'id' must be {MSG_ID_BYTES} bytes, got {len(msg_id)}")
    if job is not None:
        _expect(job, str, "job")
    if rnd is not None:
        _expect(rnd, int, "round")
        if rnd < 0:
            raise ProtocolError("field 'round' must be >= 0")
    _expect(ts, int, "ts")
    now = time.time() if now is None else now
    if check_time and abs(ts - now) > limits.max_clock_skew_s:
        raise ProtocolError(f"timestamp {ts:.0f} is {ts - now:+.0f} s from now: stale or replayed")
    _expect(body, (dict, list), "body")
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
