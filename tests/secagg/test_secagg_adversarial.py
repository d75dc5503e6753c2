"""Tampered, replayed, unsigned, mis-certified and contradicting messages are refused."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from secagg_harness import Fleet, random_inputs, wire

from fedge.edge_client.errors import SecAggError
from fedge.edge_client.identity import issue_identity_certificate, public_key_bytes
from fedge.edge_client.secagg import (
    AdvertiseKeys,
    ClientState,
    GraphKind,
    MaskedInputRequest,
    Roster,
    SecAggClient,
    SecAggConfig,
    UnmaskRequest,
    UnmaskResponse,
)
from fedge.server.secagg import SecAggServer, ServerState

D = 16
CONFIG = SecAggConfig("fleet", D, graph=GraphKind.COMPLETE)


def flip(blob: bytes, byte: int = 0) -> bytes:
    out = bytearray(blob)
    out[byte] ^= 0x01
    return bytes(out)


def resign(ad: AdvertiseKeys, key: Ed25519PrivateKey, **changes: object) -> AdvertiseKeys:
    changed = replace(ad, **changes)  # type: ignore[arg-type]
    return replace(changed, signature=key.sign(changed.signed_bytes()))


def advertised(fleet: Fleet) -> tuple[SecAggServer, dict[str, Roster]]:
    server = fleet.server()
    for u in fleet.ids:
        server.receive(u, wire(fleet.clients[u].advertise()))
    return server, {u: r for u, r in server.close_stage().items() if isinstance(r, Roster)}


def to_masking(fleet: Fleet) -> tuple[SecAggServer, dict[str, MaskedInputRequest]]:
    server, rosters = advertised(fleet)
    for u in fleet.ids:
        server.receive(u, wire(fleet.clients[u].share_keys(wire(rosters[u]))))
    reqs = server.close_stage()
    return server, {u: r for u, r in reqs.items() if isinstance(r, MaskedInputRequest)}


def to_unmasking(fleet: Fleet) -> tuple[SecAggServer, dict[str, UnmaskRequest]]:
    server, reqs = to_masking(fleet)
    inputs = random_inputs(fleet.ids, D, 0)
    for u in fleet.ids:
        server.receive(u, wire(fleet.clients[u].masked_input(wire(reqs[u]), inputs[u])))
    unmask = server.close_stage()
    return server, {u: r for u, r in unmask.items() if isinstance(r, UnmaskRequest)}


# ---- advertisements ----------------------------------------------------------------------


@pytest.mark.parametrize("field", ["cipher_public_key", "mask_public_key", "seed_commitment"])
def test_tampered_advertisement_is_refused_by_server_and_peers(field: str) -> None:
    fleet = Fleet.create(CONFIG, 4)
    ad = fleet.clients["dev-001"].advertise()
    tampered = replace(ad, **{field: flip(getattr(ad, field))})
    with pytest.raises(SecAggError, match="invalid signature"):
        fleet.server().receive("dev-001", wire(tampered))
    # A malicious server relaying it anyway: the peer refuses the roster.
    victim_fleet = Fleet.create(CONFIG, 4)
    _, rosters = advertised(victim_fleet)
    roster = rosters["dev-000"]
    bad_ads = tuple(
        replace(a, **{field: flip(getattr(a, field))})  # type: ignore[arg-type]
        if a.device_id == "dev-001"
        else a
        for a in roster.advertisements
    )
    with pytest.raises(SecAggError, match="invalid signature"):
        victim_fleet.clients["dev-000"].share_keys(replace(roster, advertisements=bad_ads))
    assert victim_fleet.clients["dev-000"].state is ClientState.FAILED


def test_flipped_signature_and_unsigned_advertisements_are_refused() -> None:
    fleet = Fleet.create(CONFIG, 3)
    ad = fleet.clients["dev-000"].advertise()
    server = fleet.server()
    with pytest.raises(SecAggError, match="invalid signature"):
        server.receive("dev-000", wire(replace(ad, signature=flip(ad.signature, 5))))
    with pytest.raises(SecAggError, match="invalid signature"):
        server.receive("dev-000", wire(replace(ad, signature=bytes(64))))
    unsigned = ad.to_wire()
    del unsigned["sig"]
    with pytest.raises(SecAggError, match="keys must be"):
        AdvertiseKeys.from_wire(unsigned)
    server.receive("dev-000", wire(ad))  # the genuine one still goes through


def test_advertisement_replayed_from_another_round_is_refused() -> None:
    fleet = Fleet.create(CONFIG, 3)
    old = fleet.client("dev-000", "round-0").advertise()
    server = fleet.server()  # round-1
    with pytest.raises(SecAggError, match="round"):
        server.receive("dev-000", wire(old))
    # Relabelling it to the current round breaks the signature.
    with pytest.raises(SecAggError, match="invalid signature"):
        server.receive("dev-000", wire(replace(old, round_id="round-1")))
    # A malicious server putting the old advertisement in a roster is caught by peers.
    server, rosters = advertised(fleet)
    roster = rosters["dev-001"]
    ads = tuple(old if a.device_id == "dev-000" else a for a in roster.advertisements)
    with pytest.raises(SecAggError, match="round"):
        fleet.clients["dev-001"].share_keys(replace(roster, advertisements=ads))


def test_certificate_from_another_authority_is_refused() -> None:
    fleet = Fleet.create(CONFIG, 3)
    rogue = Ed25519PrivateKey.generate()
    key = fleet.identities["dev-002"]
    fake_cert = issue_identity_certificate(rogue, "fleet", "dev-002", key.public_key())
    client = SecAggClient("dev-002", key, "round-1", CONFIG, None, fake_cert)
    ad = client.advertise()  # a device without the enrolment key cannot tell
    with pytest.raises(SecAggError, match="invalid enrolment signature"):
        fleet.server().receive("dev-002", wire(ad))


def test_server_substituted_keys_are_caught_by_certificates() -> None:
    """An active server swaps a neighbour's advertisement for keys it controls."""
    fleet = Fleet.create(CONFIG, 3)
    server, rosters = advertised(fleet)
    roster = rosters["dev-000"]
    evil_identity = Ed25519PrivateKey.generate()
    victim = next(a for a in roster.advertisements if a.device_id == "dev-001")
    # (a) its own identity key, no valid certificate for it
    forged = resign(
        victim,
        evil_identity,
        identity_public_key=public_key_bytes(evil_identity),
        mask_public_key=bytes(range(32)),
    )
    ads = tuple(forged if a.device_id == "dev-001" else a for a in roster.advertisements)
    with pytest.raises(SecAggError, match="another identity key"):
        fleet.clients["dev-000"].share_keys(replace(roster, advertisements=ads))
    # (b) a correctly signed dev-001 advertisement certified by another fleet's authority
    other_ad = Fleet.create(CONFIG, 3).clients["dev-001"].advertise()
    fleet2 = Fleet.create(CONFIG, 3)
    _, rosters2 = advertised(fleet2)
    ads2 = tuple(
        other_ad if a.device_id == "dev-001" else a for a in rosters2["dev-000"].advertisements
    )
    with pytest.raises(SecAggError, match="invalid enrolment signature"):
        fleet2.clients["dev-000"].share_keys(replace(rosters2["dev-000"], advertisements=ads2))


def test_without_enrolment_key_relayed_identities_are_trusted() -> None:
    """Documented weaker mode: the same substitution is NOT detectable without certificates."""
    fleet = Fleet.create(CONFIG, 3, enrolment=False)
    server, rosters = advertised(fleet)
    roster = rosters["dev-000"]
    evil_identity = Ed25519PrivateKey.generate()
    impostor = SecAggClient("dev-001", evil_identity, "round-1", CONFIG).advertise()
    ads = tuple(impostor if a.device_id == "dev-001" else a for a in roster.advertisements)
    fleet.clients["dev-000"].share_keys(replace(roster, advertisements=ads))
    assert fleet.clients["dev-000"].state is ClientState.SHARED


def test_client_needs_its_certificate_when_enrolment_is_configured() -> None:
    key = Ed25519PrivateKey.generate()
    authority = Ed25519PrivateKey.generate()
    with pytest.raises(SecAggError, match="no certificate"):
        SecAggClient("dev-000", key, "round-1", CONFIG, authority.public_key(), None)
    cert = issue_identity_certificate(authority, "fleet", "dev-009", key.public_key())
    with pytest.raises(SecAggError, match="for device"):
        SecAggClient("dev-000", key, "round-1", CONFIG, authority.public_key(), cert)
    with pytest.raises(SecAggError, match="names another fleet, device or key"):
        SecAggClient("dev-000", key, "round-1", CONFIG, None, cert)


# ---- rosters -----------------------------------------------------------------------------


def test_roster_with_lowered_threshold_is_refused() -> None:
    fleet = Fleet.create(CONFIG, 5)
    _, rosters = advertised(fleet)
    with pytest.raises(SecAggError, match="need k=4, t=3"):
        fleet.clients["dev-000"].share_keys(replace(rosters["dev-000"], t=1))


def test_roster_hiding_or_adding_neighbours_is_refused() -> None:
    config = SecAggConfig("fleet", D, security_bits=2, correctness_bits=2)
    fleet = Fleet.create(config, 12)
    _, rosters = advertised(fleet)
    roster = rosters["dev-000"]
    with pytest.raises(SecAggError, match="neighbourhood"):
        fleet.clients["dev-000"].share_keys(
            replace(roster, advertisements=roster.advertisements[1:])
        )
    fleet = Fleet.create(config, 12)
    _, rosters = advertised(fleet)
    roster = rosters["dev-000"]
    mine = {a.device_id for a in roster.advertisements} | {"dev-000"}
    stranger = next(
        a for r in rosters.values() for a in r.advertisements if a.device_id not in mine
    )
    ads = (*roster.advertisements[1:], stranger)
    with pytest.raises(SecAggError, match="neighbourhood"):
        fleet.clients["dev-000"].share_keys(replace(roster, advertisements=ads))


def test_roster_without_me_or_too_small_or_unsorted_is_refused() -> None:
    fleet = Fleet.create(SecAggConfig("fleet", D, graph=GraphKind.COMPLETE, min_clients=4), 4)
    _, rosters = advertised(fleet)
    roster = rosters["dev-000"]
    cases = [
        (replace(roster, device_ids=roster.device_ids[1:]), "does not include"),
        (replace(roster, device_ids=roster.device_ids[::-1]), "not sorted"),
        (replace(roster, round_id="round-2"), "round"),
    ]
    for bad, match in cases:
        client = fleet.client("dev-000", "round-1")
        client.advertise()
        with pytest.raises(SecAggError, match=match):
            client.share_keys(bad)
    small = Fleet.create(SecAggConfig("fleet", D, graph=GraphKind.COMPLETE, min_clients=4), 3)
    server = SecAggServer("round-1", SecAggConfig("fleet", D, graph=GraphKind.COMPLETE), small.ids)
    for u in small.ids:
        server.receive(u, wire(small.clients[u].advertise()))
    tiny = server.close_stage()
    assert isinstance(tiny["dev-000"], Roster)
    with pytest.raises(SecAggError, match="min_clients"):
        small.clients["dev-000"].share_keys(tiny["dev-000"])


# ---- shares ------------------------------------------------------------------------------


def test_bit_flipped_share_ciphertext_is_detected() -> None:
    for position in (0, 20, 159):  # nonce, body, tag
        client_fleet = Fleet.create(CONFIG, 4)
        _, creqs = to_masking(client_fleet)
        creq = creqs["dev-002"]
        bad = dict(creq.ciphertexts)
        bad["dev-001"] = flip(bad["dev-001"], position)
        with pytest.raises(SecAggError, match="from 'dev-001' failed authentication"):
            client_fleet.clients["dev-002"].masked_input(
                replace(creq, ciphertexts=bad), np.zeros(D, np.uint32)
            )
        assert client_fleet.clients["dev-002"].state is ClientState.FAILED
    # Shares addressed to someone else (misrouted) do not decrypt either.
    fleet = Fleet.create(CONFIG, 4)
    _, reqs = to_masking(fleet)
    req = reqs["dev-002"]
    swapped = dict(req.ciphertexts)
    swapped["dev-001"] = reqs["dev-003"].ciphertexts["dev-001"]
    with pytest.raises(SecAggError, match="failed authentication"):
        fleet.clients["dev-002"].masked_input(
            replace(req, ciphertexts=swapped), np.zeros(D, np.uint32)
        )


def test_shares_replayed_from_another_round_are_detected() -> None:
    """Same devices in the next round: ciphertexts of round-1 do not open in round-2."""
    fleet = Fleet.create(CONFIG, 3)
    _, old = to_masking(fleet)
    fleet.round_id = "round-2"
    fleet.clients = {u: fleet.client(u, "round-2") for u in fleet.ids}
    _, new = to_masking(fleet)
    mixed = dict(new["dev-000"].ciphertexts)
    mixed["dev-001"] = old["dev-000"].ciphertexts["dev-001"]
    with pytest.raises(SecAggError, match="failed authentication"):
        fleet.clients["dev-000"].masked_input(
            replace(new["dev-000"], ciphertexts=mixed), np.zeros(D, np.uint32)
        )


def test_masked_input_request_from_non_neighbours_or_too_few_is_refused() -> None:
    config = SecAggConfig("fleet", D, security_bits=2, correctness_bits=2)
    fleet = Fleet.create(config, 12)
    _, reqs = to_masking(fleet)
    req = reqs["dev-000"]
    k, t = config.graph_params(12)
    few = dict(list(req.ciphertexts.items())[: t - 1])
    with pytest.raises(SecAggError, match="fewer than t"):
        fleet.clients["dev-000"].masked_input(replace(req, ciphertexts=few), np.zeros(D, np.uint32))
    fleet = Fleet.create(config, 12)
    _, reqs = to_masking(fleet)
    req = reqs["dev-000"]
    outsider = next(u for u in fleet.ids if u != "dev-000" and u not in req.ciphertexts)
    extra = {**req.ciphertexts, outsider: next(iter(req.ciphertexts.values()))}
    with pytest.raises(SecAggError, match="non-neighbours"):
        fleet.clients["dev-000"].masked_input(
            replace(req, ciphertexts=extra), np.zeros(D, np.uint32)
        )


# ---- unmask ------------------------------------------------------------------------------


def _contradictions(req: UnmaskRequest, me: str) -> list[tuple[UnmaskRequest, str]]:
    s = req.survivors
    return [
        (replace(req, dropped=(s[0],)), "as survivor and as dropped"),
        (
            replace(req, survivors=s[1:], dropped=(s[0],) + req.dropped + ("dev-999",)),
            "never arrived",
        ),
        (replace(req, survivors=(*s, me)), "about itself"),
        (replace(req, survivors=s[1:]), "omits"),
        (replace(req, survivors=s[:1], dropped=s[1:]), "fewer than"),
    ]


def test_contradicting_unmask_requests_are_refused() -> None:
    for index in range(5):
        fleet = Fleet.create(CONFIG, 5)  # t = 3
        _, reqs = to_unmasking(fleet)
        bad, match = _contradictions(reqs["dev-000"], "dev-000")[index]
        with pytest.raises(SecAggError, match=match):
            fleet.clients["dev-000"].unmask(bad)
        assert fleet.clients["dev-000"].state is ClientState.FAILED
        with pytest.raises(SecAggError):  # and it never answers again in this round
            fleet.clients["dev-000"].unmask(reqs["dev-000"])


def test_asking_about_a_peer_dropped_before_sharing_is_refused() -> None:
    """dev-005 dropped before ShareKeys: dev-000 never held its shares, was told so by the
    MaskedInput request, and must refuse an unmask request that now asks about it."""
    fleet = Fleet.create(CONFIG, 6)  # t = 3
    server, rosters = advertised(fleet)
    for u in fleet.ids[:5]:  # dev-005 drops before ShareKeys
        server.receive(u, wire(fleet.clients[u].share_keys(wire(rosters[u]))))
    reqs = server.close_stage()
    assert "dev-005" not in reqs["dev-000"].ciphertexts  # type: ignore[union-attr]
    for u in fleet.ids[:5]:
        server.receive(
            u, wire(fleet.clients[u].masked_input(wire(reqs[u]), np.zeros(D, np.uint32)))
        )
    unmask = server.close_stage()
    req = unmask["dev-000"]
    assert isinstance(req, UnmaskRequest)
    with pytest.raises(SecAggError, match="never arrived"):
        fleet.clients["dev-000"].unmask(replace(req, dropped=(*req.dropped, "dev-005")))


def test_corrupted_unmask_share_is_detected_by_the_server() -> None:
    fleet = Fleet.create(CONFIG, 4)  # t = 2
    server, reqs = to_unmasking(fleet)
    for u in fleet.ids:
        resp = fleet.clients[u].unmask(wire(reqs[u]))
        if u in ("dev-000", "dev-001", "dev-002"):  # every holder of dev-003's share lies
            bad = {p: flip(v, 40) if p == "dev-003" else v for p, v in resp.seed_shares.items()}
            resp = UnmaskResponse(resp.round_id, bad, resp.key_shares)
        server.receive(u, wire(resp))
    with pytest.raises(SecAggError, match="self-mask seed of 'dev-003'"):
        server.close_stage()
    assert server.state is ServerState.ABORTED


def test_unmask_response_not_answering_the_request_is_refused() -> None:
    fleet = Fleet.create(CONFIG, 4)
    server, reqs = to_unmasking(fleet)
    resp = fleet.clients["dev-000"].unmask(wire(reqs["dev-000"]))
    partial = UnmaskResponse(
        resp.round_id, dict(list(resp.seed_shares.items())[1:]), resp.key_shares
    )
    with pytest.raises(SecAggError, match="does not answer"):
        server.receive("dev-000", partial)
    server.receive("dev-000", wire(resp))
