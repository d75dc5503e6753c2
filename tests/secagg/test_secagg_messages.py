"""Wire messages: msgpack round trips, and malformed dicts raise SecAggError only."""

from __future__ import annotations

import copy
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from secagg_harness import Fleet, random_inputs, wire

from fedge.edge_client.errors import SecAggError
from fedge.edge_client.secagg import GraphKind, MaskedInput, SecAggConfig, decode_message
from fedge.edge_client.secagg.messages import AdvertiseKeys


def _transcript() -> list[dict[str, Any]]:
    config = SecAggConfig("fleet", 8, graph=GraphKind.COMPLETE)
    fleet = Fleet.create(config, 3)
    server = fleet.server()
    out: list[dict[str, Any]] = []

    def up(u: str, msg: Any) -> None:
        out.append(msg.to_wire())
        server.receive(u, wire(msg))

    for u in fleet.ids:
        up(u, fleet.clients[u].advertise())
    requests: dict[str, Any] = dict(server.close_stage())
    inputs = random_inputs(fleet.ids, 8, 0)
    for step in ("share", "masked", "unmask"):
        for u, req in requests.items():
            out.append(req.to_wire())
            c = fleet.clients[u]
            if step == "share":
                up(u, c.share_keys(wire(req)))
            elif step == "masked":
                up(u, c.masked_input(wire(req), inputs[u]))
            else:
                up(u, c.unmask(wire(req)))
        requests = dict(server.close_stage())
    return out


TRANSCRIPT = _transcript()


def test_every_message_type_round_trips_through_msgpack() -> None:
    kinds = {m["t"] for m in TRANSCRIPT}
    assert len(kinds) == 7
    for m in TRANSCRIPT:
        decoded = decode_message(msgpack.unpackb(msgpack.packb(m)))
        again = decoded.to_wire()
        assert msgpack.packb(again) == msgpack.packb(m)
        if isinstance(decoded, MaskedInput):
            assert decoded.masked.dtype == np.dtype("<u4") and decoded.masked.shape == (8,)


JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.text(max_size=70),
    st.binary(max_size=200),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.binary(max_size=5), max_size=3),
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_mutated_messages_raise_only_secagg_error(data: st.DataObject) -> None:
    original = data.draw(st.sampled_from(TRANSCRIPT))
    msg = copy.deepcopy(original)
    path = data.draw(st.sampled_from(_paths(msg)))
    parent = msg
    for step in path[:-1]:
        parent = parent[step]
    action = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "replace":
        parent[path[-1]] = data.draw(JUNK)
    elif action == "delete":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[data.draw(st.text(max_size=8))] = data.draw(JUNK)
    else:
        parent.append(data.draw(JUNK))
    try:
        decode_message(msg)
    except SecAggError:
        return
    # Accepted: then it must still be a well-formed message of the same type.
    assert decode_message(msg).to_wire()["t"] == original["t"]


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda m: m.update(c_pk=m["c_pk"][:-1]), "c_pk must be 32 bytes"),
        (lambda m: m.update(round=""), "invalid round id"),
        (lambda m: m.update(device="a/b"), "invalid device id"),
        (lambda m: m.update(extra=1), "keys must be"),
        (lambda m: m.update(t="secagg/other"), "not a secure-aggregation message"),
        (lambda m: m.update(cert={"fleet": "f"}), "identity certificate"),
    ],
)
def test_specific_malformations_have_clear_messages(mutate: Any, match: str) -> None:
    ad = copy.deepcopy(next(m for m in TRANSCRIPT if m["t"] == AdvertiseKeys.TYPE))
    mutate(ad)
    with pytest.raises(SecAggError, match=match):
        decode_message(ad)


def test_lists_and_maps_are_checked() -> None:
    roster = copy.deepcopy(next(m for m in TRANSCRIPT if m["t"] == "secagg/roster"))
    roster["devices"] = roster["devices"] + roster["devices"][:1]
    with pytest.raises(SecAggError, match="twice"):
        decode_message(roster)
    roster = copy.deepcopy(next(m for m in TRANSCRIPT if m["t"] == "secagg/roster"))
    roster["k"] = True
    with pytest.raises(SecAggError, match="k must be an int"):
        decode_message(roster)
    masked = copy.deepcopy(next(m for m in TRANSCRIPT if m["t"] == "secagg/masked"))
    masked["y"] = masked["y"][:-1]
    with pytest.raises(SecAggError, match="multiple of 4"):
        decode_message(masked)
    bad: Any
    for bad in (None, [], "secagg/share", {"t": 5}):
        with pytest.raises(SecAggError):
            decode_message(bad)
