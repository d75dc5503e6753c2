"""The compact encodings (protocols 2, 3, 5): envelope sizes, raw digests, float16 metrics, ids,
the sender and the timestamp."""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, replace
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.edge_client.errors import ProtocolError
from fedge.edge_client.protocol import messages as m
from fedge.edge_client.protocol.envelope import (
    DEFAULT_LIMITS,
    MSG_ID_BYTES,
    PROTOCOL_VERSION,
    unpack,
)

DIGEST = "0f" * 32
UPDATE_LIMIT = 47  # bytes of the update below, payload excluded (1: 274, 2: 104, 3 and 4: 75)
SENDER = "dev-00042"
REF = m.BlobRef(sha256=DIGEST, url=f"http://127.0.0.1:8080/v1/blobs/{DIGEST}",
                signature=bytes(64), size=21032)
# Representative messages of a round, as agent and server build them.
ROUND_TRAFFIC: dict[str, m.Message] = {
    "update": m.Update(payload=b"", base_weights=m.base_digest(DIGEST),
                       metrics=m.TrainMetrics(loss=0.4321, accuracy=0.8765, examples=480,
                                              train_time_s=1.234), within_clip=None),
    "checkin": m.CheckIn(eligibility=m.Eligibility(battery=0.87, free_memory_mb=2048),
                         runtime="tflite_runtime", runtime_version="2.14.0", examples=480,
                         cached_artifacts=[DIGEST, DIGEST], profile="pi4",
                         identity_key=bytes(32), identity_cert=bytes(150)),
    "task": m.Task(kind="train", model=REF, manifest=REF, weights=REF,
                   plan=m.TrainingPlan(epochs=1, lr=0.05, max_steps=100), codec="topk:0.03+q2",
                   deadline=time.time() + 60, round_seed=123456789,
                   dp=m.DPTask(mode="central", clip=1.0)),
    "ack": m.Ack(accepted=True),
    "ack_with_window": m.Ack(accepted=True, retry_after_s=42.5),  # the last ack of a task
    "retry": m.RetryLater(reason="not selected", retry_after_s=12.5),
    "presence": m.Presence(online=True, profile="pi4"),
    "round_open": m.RoundOpen(round=12, wake_probability=0.3),
    "eval_result": m.EvalResult(loss=0.4, accuracy=0.9, examples=120),
}


def wire(message: m.Message) -> bytes:
    return m.make(message, job_id="sim", round_id=12).pack()


def received(message: m.Message) -> m.Message:
    """``message`` packed, then unpacked and parsed as the server reads it from SENDER's topic."""
    return m.parse(unpack(wire(message), SENDER))


def protocol_1_size(message: m.Message) -> int:
    """The same message as protocol 1 packed it: a map header, bodies keyed by field name."""
    return len(msgpack.packb({"v": 1, "t": message.TYPE, "id": os.urandom(12),
                              "from": "dev-00042", "job": "sim", "round": 12, "ts": time.time(),
                              "body": asdict(message)}, use_bin_type=True))


def test_update_envelope_overhead_is_within_the_limit() -> None:
    update = ROUND_TRAFFIC["update"]
    assert isinstance(update, m.Update)
    assert len(wire(update)) <= UPDATE_LIMIT
    payload = bytes(range(150))  # a top-k payload: the envelope adds exactly its overhead
    with_payload = m.Update(payload=payload,
                            base_weights=update.base_weights, metrics=update.metrics)
    assert len(wire(with_payload)) == len(wire(update)) + len(payload)


@pytest.mark.parametrize("msg_type", sorted(ROUND_TRAFFIC))
def test_no_message_is_larger_than_in_protocol_1(msg_type: str) -> None:
    message = ROUND_TRAFFIC[msg_type]
    assert len(wire(message)) < protocol_1_size(message)
    assert received(message) is not None


def test_message_id_is_8_random_bytes() -> None:
    ids = {unpack(wire(m.Ack(accepted=True)), SENDER).msg_id for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == MSG_ID_BYTES == 8 for i in ids)


def test_base_weights_travel_as_the_first_8_raw_digest_bytes() -> None:
    body = m.make(ROUND_TRAFFIC["update"]).body
    assert isinstance(body, list)
    assert body[m.UPDATE_FIELDS.index("base_weights")] == bytes.fromhex(DIGEST)[:8]


def test_the_codec_spec_does_not_travel_in_an_update() -> None:
    body = m.make(ROUND_TRAFFIC["update"]).body
    assert isinstance(body, list) and not any(isinstance(x, str) for x in body)


@settings(max_examples=100, deadline=None)
@given(digest=st.binary(min_size=32, max_size=32))
def test_base_weights_round_trip_as_the_hex_prefix(digest: bytes) -> None:
    update = m.Update(payload=b"p", base_weights=m.base_digest(digest.hex()),
                      metrics=m.TrainMetrics(loss=0.0, accuracy=0.0, examples=0, train_time_s=0))
    back = received(update)
    assert isinstance(back, m.Update) and back.base_weights == digest.hex()[:16]


@pytest.mark.parametrize("digest", ["", "ab" * 16, "AB" * 32, "zz" * 32, "ab" * 33])
def test_base_digest_of_something_that_is_not_a_sha256_is_refused(digest: str) -> None:
    with pytest.raises(ProtocolError, match="field 'base_weights' must be 64 lowercase hex"):
        m.base_digest(digest)


@pytest.mark.parametrize("base_weights", ["", "ab" * 4, "AB" * 8, "zz" * 8, "ab" * 16])
def test_update_with_base_weights_that_are_not_a_digest_prefix_cannot_be_made(
        base_weights: str) -> None:
    update = m.Update(payload=b"", base_weights=base_weights,
                      metrics=m.TrainMetrics(loss=0.0, accuracy=0.0, examples=0, train_time_s=0))
    with pytest.raises(ProtocolError, match="field 'base_weights' must be 16 lowercase hex"):
        m.make(update)


def finite(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(loss=finite(0.0, 1e9), accuracy=finite(0.0, 1.0), train_time_s=finite(0.0, 1e7),
       examples=st.integers(0, 1 << 40), within_clip=st.none() | st.booleans())
def test_metrics_round_trip_within_float16_precision(loss: float, accuracy: float,
                                                     train_time_s: float, examples: int,
                                                     within_clip: bool | None) -> None:
    sent = m.TrainMetrics(loss=loss, accuracy=accuracy, examples=examples,
                          train_time_s=train_time_s)
    update = m.Update(payload=b"", base_weights=m.base_digest(DIGEST), metrics=sent,
                      within_clip=within_clip)
    back = received(update)
    assert isinstance(back, m.Update) and back.within_clip is within_clip
    assert back.metrics.examples == examples  # an int on the wire: exact
    for name in ("loss", "accuracy", "train_time_s"):
        got, want = getattr(back.metrics, name), getattr(sent, name)
        if want >= 65504:  # float16's largest finite value: larger ones saturate there
            assert got == 65504
        else:  # half a unit in the last of float16's 11 significant bits, or of its subnormals
            assert abs(got - want) <= max(want * 2.0**-11, 2.0**-25)


def test_large_metrics_saturate_and_infinite_ones_are_refused_by_the_receiver() -> None:
    def sent(loss: float, train_time_s: float) -> m.Update:
        return m.Update(payload=b"", base_weights=m.base_digest(DIGEST),
                        metrics=m.TrainMetrics(loss=loss, accuracy=0.5, examples=1,
                                               train_time_s=train_time_s))

    back = received(sent(1e40, 1e7))
    assert isinstance(back, m.Update)
    assert (back.metrics.loss, back.metrics.train_time_s) == (65504, 65504)
    with pytest.raises(ProtocolError, match="update: field 'loss' is not finite"):
        received(sent(math.inf, 1.0))


def test_secagg_metrics_keep_their_map_form() -> None:
    """The server decodes SecAgg advertise metrics (``vars(metrics)``) with from_body."""
    metrics = m.TrainMetrics(loss=0.25, accuracy=0.5, examples=3, train_time_s=1.0)
    assert m.TrainMetrics.from_body(vars(metrics)) == metrics
    with pytest.raises(ProtocolError, match="unknown field 'extra'"):
        m.TrainMetrics.from_body({**vars(metrics), "extra": 1})


def test_header_is_positional_without_the_sender() -> None:
    raw: list[Any] = msgpack.unpackb(wire(m.Ack(accepted=True)), raw=False)
    assert raw[0] == PROTOCOL_VERSION == 6 and raw[1] == 6 and raw[3:5] == ["sim", 12]
    assert abs(raw[5] - time.time()) < 60 and type(raw[5]) is int  # whole Unix seconds
    assert raw[6] == {"accepted": True, "reason": ""}
    assert SENDER not in repr(raw)


def test_the_receiver_names_the_sender_from_the_topic() -> None:
    envelope = m.make(m.Ack(accepted=True))
    assert envelope.sender == ""  # nothing to pack
    assert unpack(envelope.pack(), "dev-1") == replace(envelope, sender="dev-1")
    assert unpack(envelope.pack(), "dev-2").sender == "dev-2"


def test_the_ack_that_ends_a_task_carries_the_next_check_in_window() -> None:
    back = received(m.Ack(accepted=False, reason="late", retry_after_s=42.5))
    assert back == m.Ack(accepted=False, reason="late", retry_after_s=42.5)
    assert received(m.Ack(accepted=True)) == m.Ack(accepted=True)


@pytest.mark.parametrize("window, match", [
    (-1.0, "outside"), (8 * 86400.0, "outside"), (float("nan"), "not finite"),
    ("soon", "has type str"), (True, "must not be a bool"),
])
def test_a_malformed_ack_window_is_refused(window: Any, match: str) -> None:
    body = {"accepted": True, "reason": "", "retry_after_s": window}
    with pytest.raises(ProtocolError, match=match):
        m.Ack.from_body(body, DEFAULT_LIMITS)
