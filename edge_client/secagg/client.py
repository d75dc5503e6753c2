"""Device half of SecAgg/SecAgg+: a state machine from AdvertiseKeys to Unmask."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedge.edge_client.arrays import Array
from fedge.edge_client.errors import ProtocolError, SecAggError
from fedge.edge_client.identity import (
    IdentityCertificate,
    public_key_bytes,
    verify_identity_certificate,
)
from fedge.edge_client.names import check_name
from fedge.edge_client.secagg.config import SecAggConfig
from fedge.edge_client.secagg.graph import neighbours_of
from fedge.edge_client.secagg.keys import (
    agree,
    decrypt_shares,
    encrypt_shares,
    pair_mask_key,
    pair_mask_sign,
    seed_commitment,
    self_mask_key,
    share_key,
    x25519_private_bytes,
    x25519_public_bytes,
)
from fedge.edge_client.secagg.messages import (
    AdvertiseKeys,
    MaskedInput,
    MaskedInputRequest,
    Roster,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from fedge.edge_client.secagg.prg import apply_masks
from fedge.edge_client.secagg.shamir import decode_share_value, encode_share_value, split_secret

_T = TypeVar("_T")


class ClientState(Enum):
    """Where a device is in one round."""

    NEW = "new"
    ADVERTISED = "advertised"
    SHARED = "shared"
    MASKED = "masked"
    DONE = "done"
    FAILED = "failed"


CLIENT_TRANSITIONS: dict[ClientState, frozenset[ClientState]] = {
    ClientState.NEW: frozenset({ClientState.ADVERTISED, ClientState.FAILED}),
    ClientState.ADVERTISED: frozenset({ClientState.SHARED, ClientState.FAILED}),
    ClientState.SHARED: frozenset({ClientState.MASKED, ClientState.FAILED}),
    ClientState.MASKED: frozenset({ClientState.DONE, ClientState.FAILED}),
    ClientState.DONE: frozenset(),
    ClientState.FAILED: frozenset(),
}


@dataclass
class _Secrets:
    cipher_key: X25519PrivateKey  # c_sk
    mask_key: X25519PrivateKey  # s_sk
    seed: bytes  # b


@dataclass(frozen=True)
class _Neighbourhood:
    t: int
    peers: dict[str, AdvertiseKeys]  # neighbour id -> its verified advertisement
    inbound_keys: dict[str, bytes]  # neighbour id -> AES-GCM key of its shares to us


class SecAggClient:
    """One device's side of one secure-aggregation round (transport-agnostic).

    Call :meth:`advertise`, :meth:`share_keys`, :meth:`masked_input` and :meth:`unmask`
    in that order with the server's messages. Any detected misbehaviour raises
    SecAggError and moves the client to FAILED; calling a method in the wrong state
    raises SecAggError and leaves the state unchanged (e.g. a redelivered message).

    Parameters
    ----------
    device_id
        This device's id (as in its certificate and topics).
    identity
        The device's Ed25519 identity key (:func:`edge_client.identity.load_or_create_identity`).
    round_id
        Round this client belongs to; every message is checked against it.
    config
        Round settings; (k, t) are recomputed from them and the roster size.
    enrolment_public_key
        Fleet enrolment authority key. If set, every peer's identity certificate is checked
        and ``certificate`` (this device's own) is required; if None, peers' identity keys
        relayed by the server are trusted (weaker: an active server can impersonate peers).
    certificate
        This device's :class:`IdentityCertificate`, attached to its advertisement.
    """

    def __init__(
        self,
        device_id: str,
        identity: Ed25519PrivateKey,
        round_id: str,
        config: SecAggConfig,
        enrolment_public_key: Ed25519PublicKey | None = None,
        certificate: IdentityCertificate | None = None,
    ) -> None:
        try:
            self.device_id = check_name("device id", device_id)
            self.round_id = check_name("round id", round_id)
        except ProtocolError as exc:
            raise SecAggError(str(exc)) from exc
        self.config = config
        self._identity = identity
        self._enrolment = enrolment_public_key
        if enrolment_public_key is not None and certificate is None:
            raise SecAggError("an enrolment key is configured but this device has no certificate")
        own_key = public_key_bytes(identity)
        if certificate is not None and enrolment_public_key is not None:
            verify_identity_certificate(
                enrolment_public_key,
                certificate,
                fleet=config.fleet,
                device_id=device_id,
                identity_public_key=own_key,
            )
        elif certificate is not None and (
            certificate.fleet,
            certificate.device_id,
            certificate.identity_public_key,
        ) != (config.fleet, device_id, own_key):
            raise SecAggError("this device's certificate names another fleet, device or key")
        self._certificate = certificate
        self._state = ClientState.NEW
        self._secrets: _Secrets | None = None
        self._hood: _Neighbourhood | None = None
        self._held: dict[str, tuple[bytes, bytes]] = {}  # sender -> (b-share, s_sk-share)

    @property
    def state(self) -> ClientState:
        """Current state."""
        return self._state

    def _move(self, target: ClientState) -> None:
        if target not in CLIENT_TRANSITIONS[self._state]:
            raise SecAggError(f"illegal client transition {self._state.value} -> {target.value}")
        self._state = target

    def _stage(
        self, name: str, required: ClientState, target: ClientState, step: Callable[[], _T]
    ) -> _T:
        if self._state is not required:
            raise SecAggError(
                f"{self.device_id}: {name} is out of order in state {self._state.value} "
                f"(expected {required.value})"
            )
        try:
            out = step()
        except SecAggError:
            self._move(ClientState.FAILED)
            raise
        self._move(target)
        return out

    @staticmethod
    def _need(value: _T | None) -> _T:
        if value is None:  # unreachable through the state machine; kept for type narrowing
            raise SecAggError("secure-aggregation client state is incomplete")
        return value

    def _check_round(self, what: str, round_id: str) -> None:
        if round_id != self.round_id:
            raise SecAggError(
                f"{what} is for round {round_id!r}, this is round {self.round_id!r} "
                "(replayed or misrouted)"
            )

    # ---- stage 1 -------------------------------------------------------------------------

    def advertise(self) -> AdvertiseKeys:
        """Create this round's key pairs and self-mask seed; return the signed advertisement."""
        return self._stage("advertise", ClientState.NEW, ClientState.ADVERTISED, self._advertise)

    def _advertise(self) -> AdvertiseKeys:
        secrets = _Secrets(X25519PrivateKey.generate(), X25519PrivateKey.generate(), os.urandom(32))
        self._secrets = secrets
        unsigned = AdvertiseKeys(
            round_id=self.round_id,
            device_id=self.device_id,
            cipher_public_key=x25519_public_bytes(secrets.cipher_key),
            mask_public_key=x25519_public_bytes(secrets.mask_key),
            seed_commitment=seed_commitment(secrets.seed, self.round_id, self.device_id),
            identity_public_key=public_key_bytes(self._identity),
            certificate=self._certificate,
            signature=b"",
        )
        signature = self._identity.sign(unsigned.signed_bytes())
        return replace(unsigned, signature=signature)

    # ---- stage 2 -------------------------------------------------------------------------

    def share_keys(self, roster: Roster) -> ShareKeys:
        """Check the roster and the neighbours' signed keys; return encrypted share pairs."""
        return self._stage(
            "share_keys",
            ClientState.ADVERTISED,
            ClientState.SHARED,
            lambda: self._share_keys(roster),
        )

    def _share_keys(self, roster: Roster) -> ShareKeys:
        secrets = self._need(self._secrets)
        self._check_round("roster", roster.round_id)
        ids = roster.device_ids
        if list(ids) != sorted(ids):
            raise SecAggError("roster device ids are not sorted")
        if self.device_id not in ids:
            raise SecAggError(f"roster does not include this device {self.device_id!r}")
        if len(ids) < self.config.min_clients:
            raise SecAggError(
                f"roster has {len(ids)} devices, fewer than min_clients={self.config.min_clients}"
            )
        k, t = self.config.graph_params(len(ids))
        if (roster.k, roster.t) != (k, t):
            raise SecAggError(
                f"roster says k={roster.k}, t={roster.t} but {len(ids)} devices need k={k}, t={t}"
            )
        hood = neighbours_of(ids, k, roster.graph_seed, self.device_id)
        peers = {ad.device_id: ad for ad in roster.advertisements}
        if len(peers) != len(roster.advertisements) or set(peers) != hood:
            raise SecAggError("roster advertisements do not match this device's neighbourhood")
        own = {x25519_public_bytes(secrets.cipher_key), x25519_public_bytes(secrets.mask_key)}
        seen: set[bytes] = set()
        for ad in peers.values():
            ad.verify(self.round_id, self.config.fleet, self._enrolment)
            for key in (ad.cipher_public_key, ad.mask_public_key):
                if key in own or key in seen:
                    raise SecAggError(f"{ad.device_id!r} advertises a duplicated public key")
                seen.add(key)
        index = {d: i + 1 for i, d in enumerate(ids)}
        order = sorted(hood)
        xs = [index[v] for v in order]
        seed_shares = split_secret(secrets.seed, t, xs)
        key_shares = split_secret(x25519_private_bytes(secrets.mask_key), t, xs)
        out: dict[str, bytes] = {}
        inbound: dict[str, bytes] = {}
        for v, b_share, s_share in zip(order, seed_shares, key_shares, strict=True):
            shared = agree(secrets.cipher_key, peers[v].cipher_public_key)
            out[v] = encrypt_shares(
                share_key(shared, self.round_id, self.device_id, v),
                self.round_id,
                self.device_id,
                v,
                encode_share_value(b_share.y),
                encode_share_value(s_share.y),
            )
            inbound[v] = share_key(shared, self.round_id, v, self.device_id)
        self._hood = _Neighbourhood(t, peers, inbound)
        return ShareKeys(self.round_id, out)

    # ---- stage 3 -------------------------------------------------------------------------

    def masked_input(self, request: MaskedInputRequest, x: Array) -> MaskedInput:
        """Store the neighbours' shares and return ``x`` masked (all in the ring mod 2^32).

        ``x`` is the codec's uint32 vector of length ``config.dimension``; by convention
        its last element(s) carry the example count, so the weight is summed securely too.
        """
        return self._stage(
            "masked_input",
            ClientState.SHARED,
            ClientState.MASKED,
            lambda: self._masked_input(request, x),
        )

    def _masked_input(self, request: MaskedInputRequest, x: Array) -> MaskedInput:
        secrets, hood = self._need(self._secrets), self._need(self._hood)
        self._check_round("masked-input request", request.round_id)
        d = self.config.dimension
        if not isinstance(x, np.ndarray) or x.dtype != np.uint32 or x.shape != (d,):
            raise SecAggError(f"input must be a uint32 vector of length {d}")
        senders = set(request.ciphertexts)
        strangers = senders - set(hood.peers)
        if strangers:
            raise SecAggError(f"shares forwarded from non-neighbours {sorted(strangers)}")
        if len(senders) < hood.t:
            raise SecAggError(
                f"only {len(senders)} neighbours shared keys, fewer than t={hood.t}: "
                "this device's masks could not be removed"
            )
        for u in sorted(senders):
            b_raw, s_raw = decrypt_shares(
                hood.inbound_keys[u],
                self.round_id,
                u,
                self.device_id,
                request.ciphertexts[u],
            )
            decode_share_value(b_raw)  # reject non-field values now, not at unmask time
            decode_share_value(s_raw)
            self._held[u] = (b_raw, s_raw)
        masks = [(self_mask_key(secrets.seed, self.round_id, self.device_id), 1)]
        for u in sorted(senders):
            shared = agree(secrets.mask_key, hood.peers[u].mask_public_key)
            masks.append(
                (
                    pair_mask_key(shared, self.round_id, self.device_id, u),
                    pair_mask_sign(self.device_id, u),
                )
            )
        y = np.array(x, dtype=np.uint32, order="C", copy=True)
        apply_masks(y, masks)
        self._secrets = None  # nothing of ours is needed any more: neighbours hold the shares
        return MaskedInput(self.round_id, y)

    # ---- stage 4 -------------------------------------------------------------------------

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Reveal b-shares of surviving and s_sk-shares of dropped neighbours, after checks.

        Refused (SecAggError) if the request lists a peer as both, lists this device or a
        peer whose shares never arrived (so was dropped before MaskedInput), omits one that
        did, or names fewer than t survivors.
        """
        return self._stage(
            "unmask", ClientState.MASKED, ClientState.DONE, lambda: self._unmask(request)
        )

    def _unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        hood = self._need(self._hood)
        self._check_round("unmask request", request.round_id)
        survivors, dropped = set(request.survivors), set(request.dropped)
        both = survivors & dropped
        if both:
            raise SecAggError(f"unmask request lists {sorted(both)} as survivor and as dropped")
        if self.device_id in survivors | dropped:
            raise SecAggError("unmask request asks this device about itself")
        unknown = (survivors | dropped) - set(self._held)
        if unknown:
            raise SecAggError(
                f"unmask request asks about {sorted(unknown)}, whose shares never arrived "
                "(they dropped before MaskedInput or are not neighbours)"
            )
        missing = set(self._held) - survivors - dropped
        if missing:
            raise SecAggError(f"unmask request omits neighbours {sorted(missing)}")
        if len(survivors) < hood.t:
            raise SecAggError(
                f"unmask request names {len(survivors)} surviving neighbours, fewer than t={hood.t}"
            )
        response = UnmaskResponse(
            self.round_id,
            {u: self._held[u][0] for u in sorted(survivors)},
            {u: self._held[u][1] for u in sorted(dropped)},
        )
        self._held = {}
        return response
