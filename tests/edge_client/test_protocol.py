"""Wire protocol: round trips of every message, every malformed case, replay, fuzzing, topics."""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, replace
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from paho.mqtt.client import topic_matches_sub

from fedge.edge_client.errors import ArtifactError, ProtocolError
from fedge.edge_client.privacy import select_distributed_params
from fedge.edge_client.protocol import messages as m
from fedge.edge_client.protocol import topics
from fedge.edge_client.protocol.envelope import (
    DEFAULT_LIMITS,
    HEADER_FIELDS,
    PROTOCOL_VERSION,
    TYPE_CODES,
    Limits,
    ReplayGuard,
    unpack,
)
from fedge.edge_client.secagg import SecAggConfig
from fedge.edge_client.weights import pack_weights, unpack_weights

# --- strategies ---------------------------------------------------------------------------

NAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True)
TEXT = st.text(max_size=40)
DIGEST = st.binary(min_size=32, max_size=32).map(bytes.hex)
UPDATE_DIGEST = st.binary(min_size=8, max_size=8).map(bytes.hex)  # an update's base_digest


def unit_floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


# Anything msgpack carries inside free-form dicts (secagg/dp settings, secagg stage data).
SCALAR = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
          | st.floats(allow_nan=False) | TEXT | st.binary(max_size=24))
FREE_VALUE = st.recursive(SCALAR, lambda c: st.lists(c, max_size=4)
                          | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12)
FREE_DICT = st.dictionaries(st.text(max_size=8), FREE_VALUE, max_size=5)

ELIGIBILITY = st.builds(m.Eligibility, charging=st.booleans(), unmetered=st.booleans(),
                        idle=st.booleans(), battery=unit_floats(0.0, 1.0),
                        free_memory_mb=st.integers(0, 1 << 30))
BLOB_REF = st.builds(
    m.BlobRef, sha256=DIGEST,
    url=st.tuples(st.sampled_from(["http://", "https://"]), TEXT).map("".join),
    signature=st.binary(min_size=64, max_size=64), size=st.integers(0, 2**40))
PLAN = st.builds(m.TrainingPlan, epochs=st.integers(0, 1000), lr=unit_floats(0.0, 100.0),
                 max_steps=st.none() | st.integers(1, 10**9), shuffle=st.booleans())
METRICS = st.builds(m.TrainMetrics, loss=unit_floats(0.0, 1e9), accuracy=unit_floats(0.0, 1.0),
                    examples=st.integers(0, 1 << 40), train_time_s=unit_floats(0.0, 1e7))

SECAGG_TASK = st.builds(
    m.SecAggTask, round_id=TEXT,
    config=st.builds(SecAggConfig, fleet=st.sampled_from(["lab", "sim"]),
                     dimension=st.integers(1, 1 << 20), dropout_rate=unit_floats(0.0, 0.9),
                     min_clients=st.integers(2, 100)),
    clip=unit_floats(1e-6, 1e6), bits=st.integers(1, 24), n_max=st.integers(1, 100_000),
    max_weight=st.integers(1, 1 << 31), stage_timeout_s=unit_floats(1e-3, 3600.0))
DP_PARAMS = select_distributed_params(1.0, 10, 100, 1.0, bits=20)
DP_TASK = st.builds(m.DPTask, mode=st.just("central"), clip=unit_floats(1e-6, 1e6)) | st.builds(
    m.DPTask, mode=st.just("distributed"), clip=st.just(1.0), params=st.just(DP_PARAMS))

MESSAGE_STRATEGIES: dict[type[m.Message], st.SearchStrategy[Any]] = {
    m.CheckIn: st.builds(
        m.CheckIn, eligibility=ELIGIBILITY, runtime=TEXT, runtime_version=TEXT,
        examples=st.integers(0, 1 << 40), cached_artifacts=st.lists(DIGEST, max_size=64),
        profile=st.none() | TEXT, identity_key=st.none() | st.binary(max_size=64),
        identity_cert=st.none() | st.binary(max_size=256)),
    m.Task: st.builds(
        m.Task, kind=st.sampled_from(["train", "evaluate"]), model=BLOB_REF, manifest=BLOB_REF,
        weights=BLOB_REF, plan=PLAN, codec=TEXT, deadline=unit_floats(-1e12, 1e12),
        round_seed=st.integers(0, 2**63 - 1), secagg=st.none() | SECAGG_TASK,
        dp=st.none() | DP_TASK),
    m.RetryLater: st.builds(m.RetryLater, reason=TEXT, retry_after_s=unit_floats(0.0, 7 * 86400)),
    m.Update: st.builds(m.Update, payload=st.binary(max_size=512), base_weights=UPDATE_DIGEST,
                        metrics=METRICS, within_clip=st.none() | st.booleans()),
    m.EvalResult: st.builds(m.EvalResult, loss=unit_floats(0.0, 1e9),
                            accuracy=unit_floats(0.0, 1.0), examples=st.integers(0, 1 << 40)),
    m.Ack: st.builds(m.Ack, accepted=st.booleans(), reason=TEXT),
    m.ErrorReport: st.builds(m.ErrorReport, code=TEXT, message=TEXT),
    m.SecAggStage: st.builds(m.SecAggStage, stage=TEXT, data=FREE_DICT),
    m.Presence: st.builds(m.Presence, online=st.booleans(), profile=st.none() | TEXT),
    m.JobState: st.builds(m.JobState, state=TEXT),
    m.RoundOpen: st.builds(m.RoundOpen, round=st.integers(0, 1 << 40),
                           wake_probability=unit_floats(0.0, 1.0)),
}
ANY_MESSAGE = st.one_of(*MESSAGE_STRATEGIES.values())

# One valid instance of each type, the starting point of every malformed case below.
REF = m.BlobRef(sha256="ab" * 32, url="http://127.0.0.1:8080/v1/blobs/" + "ab" * 32,
                signature=b"s" * 64, size=1234)
EXAMPLES: dict[str, m.Message] = {
    "checkin": m.CheckIn(eligibility=m.Eligibility(), runtime="tflite_runtime",
                         runtime_version="2.14.0", examples=100, cached_artifacts=["cd" * 32]),
    "task": m.Task(kind="train", model=REF, manifest=REF, weights=REF,
                   plan=m.TrainingPlan(epochs=1, lr=0.1, max_steps=10), codec="none",
                   deadline=time.time() + 60, round_seed=7,
                   secagg=m.SecAggTask(round_id="r.1.1", config=SecAggConfig(fleet="f", dimension=9),
                                       clip=1.0, bits=16, n_max=5, max_weight=100,
                                       stage_timeout_s=15.0)),
    "retry": m.RetryLater(reason="busy", retry_after_s=5.0),
    "update": m.Update(payload=b"\x01\x02", base_weights="ef" * 8,
                       metrics=m.TrainMetrics(loss=0.5, accuracy=0.8, examples=10,
                                              train_time_s=1.0)),
    "eval_result": m.EvalResult(loss=0.4, accuracy=0.9, examples=50),
    "ack": m.Ack(accepted=True, reason=""),
    "error": m.ErrorReport(code="ArtifactError", message="bad signature"),
    "secagg": m.SecAggStage(stage="advertise", data={"pk": b"k" * 32}),
    "presence": m.Presence(online=True, profile="pi4"),
    "job_state": m.JobState(state="finished"),
    "round_open": m.RoundOpen(round=3, wake_probability=0.5),
}


def header(msg_type: str, msg_body: Any, **overrides: Any) -> list[Any]:
    """A positional envelope; ``overrides`` are keyed by the names in HEADER_FIELDS."""
    raw = {"version": PROTOCOL_VERSION, "type": TYPE_CODES[msg_type], "id": os.urandom(8),
           "job": "job", "round": 1, "ts": int(time.time()), "body": msg_body}
    raw.update(overrides)
    return [raw[name] for name in HEADER_FIELDS]


def packed(raw: Any) -> bytes:
    return msgpack.packb(raw, use_bin_type=True)


def body_of(msg_type: str) -> Any:
    return m.make(EXAMPLES[msg_type]).body


def with_path(body: Any, path: str, value: Any) -> Any:
    """A deep copy of ``body`` with ``a.b.c`` set to ``value`` (or deleted for DELETE);
    a path segment into an array is the element's index."""
    out = msgpack.unpackb(packed(body), raw=False)
    target = out
    *parents, last = path.split(".")
    for key in parents:
        target = target[int(key) if isinstance(target, list) else key]
    index = int(last) if isinstance(target, list) else last
    if value is DELETE:
        del target[index]
    else:
        target[index] = value
    return out


def float16_on_the_wire(value: float) -> float:
    """A finite update metric as it arrives: saturated at float16's largest, then rounded."""
    return float(np.float16(min(max(value, -65504.0), 65504.0)))


def on_the_wire(message: m.Message) -> m.Message:
    """``message`` as the receiver sees it: update metrics are float16 on the wire."""
    if not isinstance(message, m.Update):
        return message
    loss, accuracy, train_time = (float16_on_the_wire(x) for x in (
        message.metrics.loss, message.metrics.accuracy, message.metrics.train_time_s))
    metrics = m.TrainMetrics(loss=loss, accuracy=accuracy, examples=message.metrics.examples,
                             train_time_s=train_time)
    return m.Update(payload=message.payload,
                    base_weights=message.base_weights, metrics=metrics,
                    within_clip=message.within_clip)


DELETE = object()


def parse_bytes(data: bytes, limits: Limits = DEFAULT_LIMITS) -> m.Message:
    return m.parse(unpack(data, "dev-1", limits), limits)


# --- round trips --------------------------------------------------------------------------

def test_every_message_type_has_a_round_trip_strategy() -> None:
    assert {cls.TYPE for cls in MESSAGE_STRATEGIES} == set(m.MESSAGE_TYPES)
    assert set(EXAMPLES) == set(m.MESSAGE_TYPES)


def test_every_message_type_has_a_distinct_wire_code() -> None:
    assert set(TYPE_CODES) == set(m.MESSAGE_TYPES)
    assert len(set(TYPE_CODES.values())) == len(TYPE_CODES)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=ANY_MESSAGE, sender=NAME, job_id=st.none() | NAME,
       round_id=st.none() | st.integers(0, 1 << 40))
def test_round_trip_make_pack_unpack_parse(message: m.Message, sender: str, job_id: str | None,
                                           round_id: int | None) -> None:
    envelope = m.make(message, job_id=job_id, round_id=round_id)
    back = unpack(envelope.pack(), sender)
    assert back == replace(envelope, sender=sender)  # the topic names the sender
    assert m.parse(back) == on_the_wire(message)


# --- malformed envelopes ------------------------------------------------------------------

ENVELOPE_CASES = [
    ("version 1", {"version": 1}, r"unsupported protocol version 1 \(this side speaks 6\)"),
    ("version 2", {"version": 2}, r"unsupported protocol version 2 \(this side speaks 6\)"),
    ("version 3", {"version": 3}, r"unsupported protocol version 3 \(this side speaks 6\)"),
    ("version 4", {"version": 4}, r"unsupported protocol version 4 \(this side speaks 6\)"),
    ("version 5", {"version": 5}, r"unsupported protocol version 5 \(this side speaks 6\)"),
    ("version 7", {"version": 7}, "unsupported protocol version 7"),
    ("missing version", {"version": None}, "field 'version' has type NoneType, expected int"),
    ("bool version", {"version": True}, "field 'version' must be int, got bool"),
    ("type as a name", {"type": "ack"}, "field 'type' has type str, expected int"),
    ("unknown type code", {"type": 99}, "unknown message type code 99"),
    ("bool type code", {"type": True}, "field 'type' must be int, got bool"),
    ("id too short", {"id": b"1234567"}, "field 'id' must be 8 bytes, got 7"),
    ("id too long", {"id": b"x" * 12}, "field 'id' must be 8 bytes, got 12"),
    ("id is text", {"id": "abcdefgh"}, "field 'id' has type str, expected bytes"),
    ("job not a string", {"job": 5}, "field 'job'"),
    ("negative round", {"round": -1}, "field 'round' must be >= 0"),
    ("bool round", {"round": True}, "field 'round' must be int, got bool"),
    ("float round", {"round": 1.0}, "field 'round' has type float"),
    ("timestamp too old", {"ts": int(time.time()) - 3600}, "stale or replayed"),
    ("timestamp too new", {"ts": int(time.time()) + 3600}, "stale or replayed"),
    ("timestamp far future", {"ts": 2**64 - 1}, "stale or replayed"),
    ("timestamp a float", {"ts": time.time()}, "field 'ts' has type float, expected int"),
    ("timestamp infinite", {"ts": math.inf}, "field 'ts' has type float, expected int"),
    ("timestamp NaN", {"ts": math.nan}, "field 'ts' has type float, expected int"),
    ("timestamp text", {"ts": "now"}, "field 'ts'"),
    ("timestamp bool", {"ts": True}, "field 'ts' must be int, got bool"),
    ("body a string", {"body": "text"}, "field 'body' has type str, expected dict or list"),
]


@pytest.mark.parametrize("overrides, match", [c[1:] for c in ENVELOPE_CASES],
                         ids=[c[0] for c in ENVELOPE_CASES])
def test_malformed_envelope_is_refused(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        unpack(packed(header("ack", body_of("ack"), **overrides)), "dev-1")


def test_envelope_that_is_not_an_array_or_not_msgpack_is_refused() -> None:
    for raw in ([], "text", 5):
        with pytest.raises(ProtocolError, match="must be a non-empty msgpack array"):
            unpack(packed(raw), "dev-1")
    with pytest.raises(ProtocolError, match="envelope has 3 fields, expected 7"):
        unpack(packed([PROTOCOL_VERSION, 6, os.urandom(8)]), "dev-1")
    with pytest.raises(ProtocolError, match="envelope has 8 fields, expected 7"):
        unpack(packed(header("ack", body_of("ack")) + [None]), "dev-1")
    with pytest.raises(ProtocolError, match="not a msgpack message"):
        unpack(b"\xc1", "dev-1")
    with pytest.raises(ProtocolError, match="not a msgpack message"):
        unpack(packed(header("ack", body_of("ack"))) + b"\x00", "dev-1")  # trailing garbage


def test_oversized_message_is_refused_before_decoding() -> None:
    small = Limits(max_message_bytes=256)
    data = packed(header("error", {"code": "x", "message": "y" * 300}))
    with pytest.raises(ProtocolError, match=f"{len(data)} bytes exceeds the limit of 256"):
        unpack(data, "dev-1", small)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        unpack(b"\x00" * (DEFAULT_LIMITS.max_message_bytes + 1), "dev-1")


def test_old_timestamp_is_accepted_only_without_time_check() -> None:
    data = packed(header("presence", {"online": False, "profile": None},
                         ts=int(time.time()) - 86400))
    with pytest.raises(ProtocolError, match="stale"):
        unpack(data, "dev-1")
    assert m.parse(unpack(data, "dev-1", check_time=False)) == m.Presence(online=False)


def test_clock_skew_limit_is_configurable() -> None:
    now = 1_000_000
    data = packed(header("ack", body_of("ack"), ts=now + 30))
    assert unpack(data, "dev-1", now=now).ts == now + 30
    with pytest.raises(ProtocolError, match="stale"):
        unpack(data, "dev-1", Limits(max_clock_skew_s=10), now=now)


def test_unknown_message_type_is_refused() -> None:
    with pytest.raises(ProtocolError, match="unknown message type 'launch'"):
        m.Envelope(type="launch", body={}).pack()
    with pytest.raises(ProtocolError, match="unknown message type 'launch'"):
        m.parse(m.Envelope(type="launch", body={}))


def test_version_1_envelope_is_refused_with_a_clear_message() -> None:
    """Protocol 1 sent a map envelope; its devices get a reason, not a field error."""
    v1 = {"v": 1, "t": "checkin", "id": os.urandom(12), "from": "dev-1", "job": "job",
          "round": 1, "ts": time.time(), "body": asdict(EXAMPLES["checkin"])}
    with pytest.raises(ProtocolError,
                       match=r"unsupported protocol version 1 \(a map envelope; this side speaks 6"):
        unpack(packed(v1), "dev-1")
    array_v1 = m.Envelope(type="ack", body={}, version=1).pack()
    with pytest.raises(ProtocolError, match="unsupported protocol version 1"):
        unpack(array_v1, "dev-1")


# --- malformed bodies ---------------------------------------------------------------------

UPD = {name: str(i) for i, name in enumerate(m.UPDATE_FIELDS)}  # paths into the update array


def f16(*values: float) -> bytes:
    return np.array(values, "<f2").tobytes()


BODY_CASES: list[tuple[str, str, Any, str]] = [
    ("checkin", "runtime", DELETE, "checkin: missing field 'runtime'"),
    ("checkin", "runtime", 5, "field 'runtime' has type int"),
    ("checkin", "examples", True, "field 'examples' must not be a bool"),
    ("checkin", "examples", 1.5, "field 'examples' has type float"),
    ("checkin", "examples", -1, "field 'examples'=-1 outside"),
    ("checkin", "runtime", "r" * 4097, "field 'runtime' is too long"),
    ("checkin", "eligibility", [1], "field 'eligibility' has type list"),
    ("checkin", "eligibility.battery", math.nan, "field 'battery' is not finite"),
    ("checkin", "eligibility.battery", math.inf, "field 'battery' is not finite"),
    ("checkin", "eligibility.battery", 1.5, "field 'battery'=1.5 outside"),
    ("checkin", "eligibility.charging", 1, "field 'charging' has type int"),
    ("checkin", "eligibility.free_memory_mb", -1, "free_memory_mb"),
    ("checkin", "cached_artifacts", ["cd" * 32] * 65, "cached_artifacts"),
    ("checkin", "cached_artifacts", ["short"], "cached_artifacts"),
    ("checkin", "identity_key", "text", "field 'identity_key' has type str"),
    ("checkin", "extra", 1, "checkin: unknown field 'extra'"),
    ("checkin", "eligibility.extra", 1, "unknown field 'extra'"),
    ("task", "kind", "delete", "task kind must be train or evaluate"),
    ("task", "model.sha256", "AB" * 32, "field 'sha256' must be 64 lowercase hex"),
    ("task", "model.url", "ftp://host/blob", "blob url must be http"),
    ("task", "weights.signature", b"s" * 63, "signature must be 64 bytes"),
    ("task", "manifest.size", -1, "size"),
    ("task", "plan.epochs", 1001, "field 'epochs'=1001 outside"),
    ("task", "plan.lr", math.nan, "field 'lr' is not finite"),
    ("task", "plan.lr", -0.1, "field 'lr'=-0.1 outside"),
    ("task", "plan.max_steps", 0, "field 'max_steps'=0 outside"),
    ("task", "plan.shuffle", "yes", "field 'shuffle' has type str"),
    ("task", "round_seed", -1, "round_seed"),
    ("task", "round_seed", 2**63, "round_seed"),
    ("task", "deadline", math.inf, "field 'deadline' is not finite"),
    ("task", "secagg", [1, 2], "field 'secagg' has type list"),
    ("task", "plan.extra", 1, "unknown field 'extra'"),
    ("task", "weights." + "x" * 100, 1, "unknown field 'xxxxx"),
    ("retry", "retry_after_s", -1.0, "retry_after_s"),
    ("retry", "retry_after_s", 8 * 86400.0, "retry_after_s"),
    ("update", UPD["payload"], "text", "field 'payload' has type str"),
    ("update", UPD["base_weights"], "ef" * 8, "field 'base_weights' has type str"),
    ("update", UPD["base_weights"], b"\xef" * 16, "field 'base_weights' must be 8 bytes"),
    ("update", UPD["metrics"], None, "missing field 'metrics'"),
    ("update", UPD["metrics"], {"loss": 0.5}, "field 'metrics' has type dict"),
    ("update", UPD["metrics"], f16(0.5, 0.8), "field 'metrics' must be 6 bytes"),
    ("update", UPD["metrics"], f16(0.5, 0.8, 1.0) + b"\x00" * 6, "field 'metrics' must be 6"),
    ("update", UPD["metrics"], f16(math.nan, 0.8, 1.0), "field 'loss' is not finite"),
    ("update", UPD["metrics"], f16(0.5, math.inf, 1.0), "field 'accuracy' is not finite"),
    ("update", UPD["metrics"], f16(0.5, 1.5, 1.0), "field 'accuracy'=1.5 outside"),
    ("update", UPD["metrics"], f16(0.5, 0.8, -1.0), "field 'train_time_s'=-1.0 outside"),
    ("update", UPD["metrics"], f16(-0.5, 0.8, 1.0), "field 'loss'=-0.5 outside"),
    ("update", UPD["examples"], False, "field 'examples' must not be a bool"),
    ("update", UPD["examples"], 1.5, "field 'examples' has type float"),
    ("update", UPD["examples"], -1, "field 'examples'=-1 outside"),
    ("update", UPD["examples"], None, "missing field 'examples'"),
    ("update", UPD["examples"], DELETE, "body has 3 fields, expected 4 to 5"),
    ("eval_result", "examples", True, "must not be a bool"),
    ("eval_result", "loss", -0.5, "field 'loss'=-0.5 outside"),
    ("ack", "accepted", DELETE, "missing field 'accepted'"),
    ("ack", "accepted", 1, "field 'accepted' has type int"),
    ("ack", "reason", "r" * 4097, "field 'reason' is too long"),
    ("ack", "extra", 1, "ack: unknown field 'extra'"),
    ("error", "message", b"bytes", "field 'message' has type bytes"),
    ("secagg", "data", "text", "field 'data' has type str"),
    ("presence", "online", None, "missing field 'online'"),
    ("job_state", "state", 3, "field 'state' has type int"),
    ("round_open", "wake_probability", 1.5, "wake_probability"),
    ("round_open", "round", True, "must not be a bool"),
]


@pytest.mark.parametrize("msg_type, path, value, match", BODY_CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]!r}"[:60] for c in BODY_CASES])
def test_malformed_body_is_refused_with_a_clear_message(msg_type: str, path: str, value: Any,
                                                        match: str) -> None:
    data = packed(header(msg_type, with_path(body_of(msg_type), path, value)))
    with pytest.raises(ProtocolError, match=match):
        parse_bytes(data)


def test_update_body_optional_and_extra_elements() -> None:
    body = body_of("update")
    assert len(body) == len(m.UPDATE_FIELDS) - 1  # within_clip=None is left out
    for extra, match in ((["yes"], "field 'within_clip' has type str"),
                         ([1], "field 'within_clip' has type int"),
                         ([True, 0], "body has 6 fields, expected 4 to 5")):
        with pytest.raises(ProtocolError, match=match):
            parse_bytes(packed(header("update", body + extra)))
    assert isinstance(parse_bytes(packed(header("update", body + [None]))), m.Update)


def test_body_of_the_wrong_kind_is_refused() -> None:
    with pytest.raises(ProtocolError, match="update: field 'body' must be an array"):
        parse_bytes(packed(header("update", {"payload": b""})))
    with pytest.raises(ProtocolError, match="ack: field 'body' must be a map"):
        parse_bytes(packed(header("ack", [True, ""])))


def test_string_limit_of_the_given_limits_applies() -> None:
    envelope = m.make(m.Ack(accepted=False, reason="r" * 100))
    assert m.parse(envelope) == m.Ack(accepted=False, reason="r" * 100)
    with pytest.raises(ProtocolError, match="too long"):
        m.parse(envelope, Limits(max_string_len=16))


def test_longest_allowed_string_is_accepted() -> None:
    message = m.ErrorReport(code="c", message="x" * DEFAULT_LIMITS.max_string_len)
    assert parse_bytes(m.make(message).pack()) == message


# --- replay -------------------------------------------------------------------------------

def test_replay_guard_refuses_a_replayed_id_from_the_same_sender() -> None:
    guard = ReplayGuard(window_s=600)
    envelope = unpack(m.make(EXAMPLES["ack"]).pack(), "dev-1")
    guard.check(envelope, now=1000.0)
    with pytest.raises(ProtocolError, match=f"replayed message id {envelope.msg_id.hex()}"):
        guard.check(unpack(envelope.pack(), "dev-1"), now=1100.0)
    other_sender = m.Envelope(type="ack", body={}, sender="dev-2", msg_id=envelope.msg_id)
    guard.check(other_sender, now=1100.0)  # ids are scoped per sender
    guard.check(unpack(m.make(EXAMPLES["ack"]).pack(), "dev-1"), now=1100.0)  # a fresh id


@settings(max_examples=50, deadline=None)
@given(ids=st.lists(st.binary(min_size=8, max_size=32), min_size=1, max_size=30, unique=True),
       delays=st.lists(st.floats(0, 1199), min_size=30, max_size=30))
def test_replay_within_twice_the_window_is_always_refused(ids: list[bytes],
                                                          delays: list[float]) -> None:
    guard = ReplayGuard(window_s=600)
    for i, msg_id in enumerate(ids):
        guard.check(m.Envelope(type="ack", body={}, sender="d", msg_id=msg_id), now=float(i))
    last = len(ids) - 1
    for i, msg_id in enumerate(ids):
        with pytest.raises(ProtocolError, match="replayed"):
            guard.check(m.Envelope(type="ack", body={}, sender="d", msg_id=msg_id),
                        now=last + min(delays[i], 1199.0 - last))


def test_replay_guard_memory_is_bounded_per_sender() -> None:
    guard = ReplayGuard(window_s=600, per_sender=3)
    envelopes = [m.Envelope(type="ack", body={}, sender="d", msg_id=bytes([i]) * 12)
                 for i in range(4)]
    for e in envelopes:
        guard.check(e, now=0.0)
    guard.check(envelopes[0], now=1.0)  # evicted to stay within capacity
    with pytest.raises(ProtocolError, match="replayed"):
        guard.check(envelopes[3], now=1.0)
    other = m.Envelope(type="ack", body={}, sender="e", msg_id=bytes([9]) * 12)
    guard.check(other, now=1.0)
    for i in range(10, 20):  # "d" floods ids: "e"'s id must still be remembered
        guard.check(m.Envelope(type="ack", body={}, sender="d", msg_id=bytes([i]) * 12), now=1.0)
    with pytest.raises(ProtocolError, match="replayed"):
        guard.check(other, now=2.0)


# --- fuzzing: nothing but ProtocolError ---------------------------------------------------

def parse_or_protocol_error(data: bytes) -> None:
    try:
        parse_bytes(data)
    except ProtocolError:
        pass


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=300))
def test_random_bytes_raise_only_protocol_error(data: bytes) -> None:
    parse_or_protocol_error(data)


@settings(max_examples=150, deadline=None)
@given(msg_type=st.sampled_from(sorted(EXAMPLES)), body=FREE_DICT)
def test_random_bodies_raise_only_protocol_error(msg_type: str, body: dict[str, Any]) -> None:
    parse_or_protocol_error(packed(header(msg_type, body)))


def leaf_paths(body: dict[str, Any] | list[Any], prefix: str = "") -> list[str]:
    out = []
    items = body.items() if isinstance(body, dict) else enumerate(body)
    for key, value in items:
        out.append(prefix + str(key))
        if isinstance(value, dict | list):
            out.extend(leaf_paths(value, prefix + str(key) + "."))
    return out


@settings(max_examples=400, deadline=None)
@given(data=st.data(), msg_type=st.sampled_from(sorted(EXAMPLES)))
def test_one_mutated_field_raises_only_protocol_error(data: st.DataObject, msg_type: str) -> None:
    body = body_of(msg_type)
    path = data.draw(st.sampled_from(leaf_paths(body)))
    value = data.draw(st.just(DELETE) | FREE_VALUE | st.floats()
                      | st.integers(-(2**63), 2**64 - 1))
    parse_or_protocol_error(packed(header(msg_type, with_path(body, path, value))))


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(HEADER_FIELDS),
       value=FREE_VALUE | st.floats())
def test_random_header_values_raise_only_protocol_error(key: str, value: Any) -> None:
    parse_or_protocol_error(packed(header("ack", body_of("ack"), **{key: value})))


# --- tensors and the weights blob ---------------------------------------------------------

ALLOWED = sorted(m.ALLOWED_DTYPES)


@settings(max_examples=150, deadline=None)
@given(array=st.sampled_from(ALLOWED).flatmap(lambda dt: hnp.arrays(
    np.dtype(dt), hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
    elements={"allow_nan": False, "allow_infinity": False} if dt.startswith("float") else None)),
    big_endian=st.booleans())
def test_tensor_round_trip(array: np.ndarray, big_endian: bool) -> None:
    if big_endian:
        array = array.astype(array.dtype.newbyteorder(">"))
    back = m.decode_tensor(msgpack.unpackb(packed(m.encode_tensor(array)), raw=False))
    assert back.dtype.name == array.dtype.name and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_scalar_tensor_keeps_its_shape() -> None:
    back = m.decode_tensor(m.encode_tensor(np.array(3.5, np.float32)))
    assert back.shape == () and back == np.float32(3.5)


def tensor(**overrides: Any) -> dict[str, Any]:
    obj = m.encode_tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    obj.update(overrides)
    return obj


TENSOR_CASES = [
    ("float64 dtype", tensor(dtype="float64"), "dtype 'float64' not allowed"),
    ("object dtype", tensor(dtype="object"), "dtype 'object' not allowed"),
    ("missing dtype", {"shape": [1], "data": b"\0" * 4}, "dtype None not allowed"),
    ("shape not a list", tensor(shape=6), "shape must be a list"),
    ("nine dims", tensor(shape=[1] * 9), "at most 8 dims"),
    ("negative dim", tensor(shape=[-2, -3]), "non-negative ints"),
    ("bool dim", tensor(shape=[True, 6]), "non-negative ints"),
    ("float dim", tensor(shape=[2.0, 3]), "non-negative ints"),
    ("too few bytes", tensor(data=b"\0" * 20), "20 bytes do not match shape"),
    ("too many bytes", tensor(data=b"\0" * 28), "28 bytes do not match shape"),
    ("data not bytes", tensor(data="abc"), "data must be bytes"),
    ("NaN", m.encode_tensor(np.array([1.0, np.nan], np.float32)), "NaN or infinity"),
    ("inf float16", m.encode_tensor(np.array([np.inf], np.float16)), "NaN or infinity"),
    ("not a map", [1, 2], "expected a tensor map"),
    ("huge empty dims", tensor(shape=[2**40, 2**40, 0], data=b""), "shape"),
]


@pytest.mark.parametrize("obj, match", [c[1:] for c in TENSOR_CASES],
                         ids=[c[0] for c in TENSOR_CASES])
def test_malformed_tensor_is_refused(obj: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        m.decode_tensor(obj, name="t")


def test_tensor_element_limit() -> None:
    obj = m.encode_tensor(np.zeros(100, np.uint8))
    assert m.decode_tensor(obj, Limits(max_tensor_elements=100)).shape == (100,)
    with pytest.raises(ProtocolError, match="100 elements exceed the limit 99"):
        m.decode_tensor(obj, Limits(max_tensor_elements=99))


def test_encoding_a_dtype_the_wire_does_not_carry_is_refused() -> None:
    with pytest.raises(ProtocolError, match="cannot travel"):
        m.encode_tensor(np.zeros(3, np.float64))


def test_weights_blob_round_trip_and_refusals() -> None:
    weights = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4, np.float32)]
    shapes = [(2, 3), (4,)]
    back = unpack_weights(pack_weights(weights), shapes)
    assert all(np.array_equal(a, b) and b.dtype == np.float32
               for a, b in zip(weights, back, strict=True))
    with pytest.raises(ArtifactError, match="must hold 3 tensors"):
        unpack_weights(pack_weights(weights), shapes + [(1,)])
    with pytest.raises(ArtifactError, match=r"weights\[1\] is float32\[4\], expected float32\[5\]"):
        unpack_weights(pack_weights(weights), [(2, 3), (5,)])
    with pytest.raises(ArtifactError, match="not msgpack"):
        unpack_weights(b"\xc1", shapes)
    with pytest.raises(ArtifactError, match="unknown format"):
        unpack_weights(packed({"format": "other", "tensors": []}), shapes)
    half = packed({"format": "fedge-weights-v1",
                   "tensors": [m.encode_tensor(np.zeros((2, 3), np.float16)),
                               m.encode_tensor(np.zeros(4, np.float32))]})
    with pytest.raises(ArtifactError, match=r"weights\[0\] is float16"):
        unpack_weights(half, shapes)


def test_weights_blob_with_absurd_dims_gives_artifact_error() -> None:
    blob = packed({"format": "fedge-weights-v1",
                   "tensors": [{"dtype": "float32", "shape": [2**63, 0], "data": b""}]})
    with pytest.raises(ArtifactError):
        unpack_weights(blob, [(0,)])


# --- topics -------------------------------------------------------------------------------

@settings(max_examples=100, deadline=None)
@given(fleet=NAME, device=NAME)
def test_device_topics_round_trip_and_match_the_server_filters(fleet: str, device: str) -> None:
    for make_topic, kind in ((topics.device_up, "up"), (topics.device_down, "down"),
                             (topics.device_presence, "presence")):
        topic = make_topic(fleet, device)
        assert topics.parse_device_topic(topic) == (fleet, device, kind)
    assert topic_matches_sub(topics.server_up_filter(fleet), topics.device_up(fleet, device))
    assert topic_matches_sub(topics.server_presence_filter(fleet),
                             topics.device_presence(fleet, device))
    assert not topic_matches_sub(topics.server_up_filter(fleet), topics.device_down(fleet, device))
    assert topics.check_name("device id", device) == device


BAD_NAMES = ["", "-dev", ".dev", "a/b", "+", "#", "dev 1", "d" * 65, "dév", "dev\n", "dev\x00",
             "a+b"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n)[:20] for n in BAD_NAMES])
def test_check_name_refuses_unsafe_topic_segments(name: str) -> None:
    with pytest.raises(ProtocolError, match="invalid device id"):
        topics.check_name("device id", name)


def test_check_name_refuses_non_strings() -> None:
    with pytest.raises(ProtocolError, match="invalid fleet 5"):
        topics.check_name("fleet", 5)  # type: ignore[arg-type]


def test_topic_helpers_validate_names() -> None:
    for fleet, device in [("test", "+"), ("a/b", "dev-1"), ("test", "#"), ("test", "dev/up")]:
        for make_topic in (topics.device_up, topics.device_down, topics.device_presence):
            with pytest.raises(ProtocolError, match="invalid"):
                make_topic(fleet, device)


@pytest.mark.parametrize("topic", [
    "fedge/v1/test/dev/dev-1", "fedge/v2/test/dev/dev-1/up", "fedge/v1/test/broadcast",
    "fedge/v1/test/dev/dev-1/up/extra", "other/v1/test/dev/dev-1/up", "fedge/v1/test/xyz/d/up",
])
def test_parse_device_topic_refuses_other_topics(topic: str) -> None:
    with pytest.raises(ProtocolError, match="not a device topic"):
        topics.parse_device_topic(topic)


def test_parse_device_topic_validates_fleet_and_device_names() -> None:
    for topic in ("fedge/v1/test/dev/ bad id/up", "fedge/v1/test/dev//up",
                  "fedge/v1//dev/dev-1/up", "fedge/v1/test/dev/" + "d" * 65 + "/up"):
        with pytest.raises(ProtocolError):
            topics.parse_device_topic(topic)
