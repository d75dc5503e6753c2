"""SecAgg wire messages: plain objects with ``to_wire() -> dict`` and validating ``from_wire``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedge.edge_client.arrays import Array
from fedge.edge_client.errors import ProtocolError, SecAggError
from fedge.edge_client.identity import (
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    IdentityCertificate,
    canonical_bytes,
    verify_identity_certificate,
)
from fedge.edge_client.names import check_name
from fedge.edge_client.secagg.keys import KEY_BYTES, SHARE_CIPHERTEXT_BYTES
from fedge.edge_client.secagg.shamir import SHARE_BYTES

MAX_DEVICES = 100_000
ADVERTISE_DOMAIN = b"fedge/secagg/v1/advertise"


def _fields(
    d: Any, tag: str, required: set[str], optional: frozenset[str] = frozenset()
) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise SecAggError(f"{tag}: message must be a dict, got {type(d).__name__}")
    if not isinstance(d.get("t"), str) or d["t"] != tag:
        raise SecAggError(f"expected a {tag!r} message, got type {d.get('t')!r}")
    keys = set(d) - {"t"}
    if not required <= keys or not keys <= required | optional:
        raise SecAggError(
            f"{tag}: keys must be {sorted(required)} (optional {sorted(optional)}), "
            f"got {sorted(map(str, keys))}"
        )
    return d


def _name(value: Any, tag: str, kind: str) -> str:
    try:
        return check_name(kind, value)
    except ProtocolError as exc:
        raise SecAggError(f"{tag}: {exc}") from exc


def _bytes(value: Any, tag: str, what: str, length: int) -> bytes:
    if not isinstance(value, bytes) or len(value) != length:
        raise SecAggError(f"{tag}: {what} must be {length} bytes")
    return value


def _int(value: Any, tag: str, what: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise SecAggError(f"{tag}: {what} must be an int in [{lo}, {hi}]")
    return value


def _names(value: Any, tag: str, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_DEVICES:
        raise SecAggError(f"{tag}: {what} must be a list of at most {MAX_DEVICES} device ids")
    out = tuple(_name(v, tag, "device id") for v in value)
    if len(set(out)) != len(out):
        raise SecAggError(f"{tag}: {what} lists a device twice")
    return out


def _bytes_map(value: Any, tag: str, what: str, length: int) -> dict[str, bytes]:
    if not isinstance(value, dict) or len(value) > MAX_DEVICES:
        raise SecAggError(f"{tag}: {what} must be a dict of at most {MAX_DEVICES} entries")
    return {
        _name(peer, tag, "device id"): _bytes(blob, tag, f"{what} of {peer!r}", length)
        for peer, blob in value.items()
    }


@dataclass(frozen=True)
class AdvertiseKeys:
    """Stage 1, device -> server (relayed to neighbours): two X25519 keys, signed."""

    TYPE: ClassVar[str] = "secagg/advertise"
    round_id: str
    device_id: str
    cipher_public_key: bytes  # c_pk: agreement for share encryption
    mask_public_key: bytes  # s_pk: agreement for pairwise masks
    seed_commitment: bytes  # SHA-256 commitment to the self-mask seed b
    identity_public_key: bytes  # Ed25519
    certificate: IdentityCertificate | None
    signature: bytes  # identity key's signature over signed_bytes()

    def signed_bytes(self) -> bytes:
        """What the identity key signs: round, device and the three advertised values."""
        return canonical_bytes(
            ADVERTISE_DOMAIN,
            self.round_id,
            self.device_id,
            self.cipher_public_key,
            self.mask_public_key,
            self.seed_commitment,
            self.identity_public_key,
        )

    def verify(
        self, round_id: str, fleet: str, enrolment_public_key: Ed25519PublicKey | None
    ) -> None:
        """Check round, identity signature and (if an enrolment key is given) certificate.

        Without an enrolment key the identity key inside the advertisement is taken on
        trust: the signature then only proves the keys were not altered after signing.

        Raises
        ------
        SecAggError
            On a wrong round, a bad signature, or a missing/invalid certificate.
        """
        if self.round_id != round_id:
            raise SecAggError(
                f"advertisement of {self.device_id!r} is for round {self.round_id!r}, "
                f"not {round_id!r}"
            )
        try:
            Ed25519PublicKey.from_public_bytes(self.identity_public_key).verify(
                self.signature, self.signed_bytes()
            )
        except (InvalidSignature, ValueError) as exc:
            raise SecAggError(
                f"advertisement of {self.device_id!r} has an invalid signature"
            ) from exc
        if enrolment_public_key is None:
            return
        if self.certificate is None:
            raise SecAggError(
                f"advertisement of {self.device_id!r} carries no identity certificate"
            )
        verify_identity_certificate(
            enrolment_public_key,
            self.certificate,
            fleet=fleet,
            device_id=self.device_id,
            identity_public_key=self.identity_public_key,
        )

    def to_wire(self) -> dict[str, Any]:
        """Msgpack-friendly dict."""
        out: dict[str, Any] = {
            "t": self.TYPE,
            "round": self.round_id,
            "device": self.device_id,
            "c_pk": self.cipher_public_key,
            "s_pk": self.mask_public_key,
            "b_commit": self.seed_commitment,
            "id_pk": self.identity_public_key,
            "sig": self.signature,
        }
        if self.certificate is not None:
            out["cert"] = self.certificate.to_wire()
        return out

    @classmethod
    def from_wire(cls, d: Any) -> Self:
        """Validate and decode; raises SecAggError on anything malformed."""
        tag = cls.TYPE
        req = {"round", "device", "c_pk", "s_pk", "b_commit", "id_pk", "sig"}
        d = _fields(d, tag, req, frozenset({"cert"}))
        return cls(
            round_id=_name(d["round"], tag, "round id"),
            device_id=_name(d["device"], tag, "device id"),
            cipher_public_key=_bytes(d["c_pk"], tag, "c_pk", KEY_BYTES),
            mask_public_key=_bytes(d["s_pk"], tag, "s_pk", KEY_BYTES),
            seed_commitment=_bytes(d["b_commit"], tag, "b_commit", KEY_BYTES),
            identity_public_key=_bytes(d["id_pk"], tag, "id_pk", PUBLIC_KEY_BYTES),
            certificate=IdentityCertificate.from_wire(d["cert"]) if "cert" in d else None,
            signature=_bytes(d["sig"], tag, "sig", SIGNATURE_BYTES),
        )


@dataclass(frozen=True)
class Roster:
    """Stage 2 request, server -> device: who is in the round and the neighbours' keys."""

    TYPE: ClassVar[str] = "secagg/roster"
    round_id: str
    graph_seed: bytes
    k: int
    t: int
    device_ids: tuple[str, ...]  # every device that advertised keys, sorted
    advertisements: tuple[AdvertiseKeys, ...]  # the recipient's neighbours only

    def to_wire(self) -> dict[str, Any]:
        """Msgpack-friendly dict."""
        return {
            "t": self.TYPE,
            "round": self.round_id,
            "seed": self.graph_seed,
            "k": self.k,
            "thr": self.t,
            "devices": list(self.device_ids),
            "ads": [ad.to_wire() for ad in self.advertisements],
        }

    @classmethod
    def from_wire(cls, d: Any) -> Self:
        """Validate and decode; raises SecAggError on anything malformed."""
        tag = cls.TYPE
        d = _fields(d, tag, {"round", "seed", "k", "thr", "devices", "ads"})
        ads = d["ads"]
        if not isinstance(ads, list) or len(ads) > MAX_DEVICES:
            raise SecAggError(f"{tag}: ads must be a list of at most {MAX_DEVICES} entries")
        return cls(
            round_id=_name(d["round"], tag, "round id"),
            graph_seed=_bytes(d["seed"], tag, "seed", KEY_BYTES),
            k=_int(d["k"], tag, "k", 1, MAX_DEVICES),
            t=_int(d["thr"], tag, "thr", 1, MAX_DEVICES),
            device_ids=_names(d["devices"], tag, "devices"),
            advertisements=tuple(AdvertiseKeys.from_wire(ad) for ad in ads),
        )


@dataclass(frozen=True)
class ShareKeys:
    """Stage 2 reply, device -> server: encrypted (b, s_sk) share pairs, one per neighbour."""

    TYPE: ClassVar[str] = "secagg/share"
    round_id: str
    ciphertexts: dict[str, bytes]  # recipient -> nonce || AES-GCM ciphertext || tag

    def to_wire(self) -> dict[str, Any]:
        """Msgpack-friendly dict."""
        return {"t": self.TYPE, "round": self.round_id, "shares": dict(self.ciphertexts)}

    @classmethod
    def from_wire(cls, d: Any) -> Self:
        """Validate and decode; raises SecAggError on anything malformed."""
        tag = cls.TYPE
        d = _fields(d, tag, {"round", "shares"})
        return cls(
            _name(d["round"], tag, "round id"),
            _bytes_map(d["shares"], tag, "shares", SHARE_CIPHERTEXT_BYTES),
        )


@dataclass(frozen=True)
class MaskedInputRequest:
    """Stage 3 request, server -> device: the share ciphertexts addressed to it."""

    TYPE: ClassVar[str] = "secagg/masked-request"
    round_id: str
    ciphertexts: dict[str, bytes]  # sender -> ciphertext; senders = neighbours still in

    def to_wire(self) -> dict[str, Any]:
        """Msgpack-friendly dict."""
        return {"t": self.TYPE, "round": self.round_id, "shares": dict(self.ciphertexts)}

    @classmethod
    def from_wire(cls, d: Any) -> Self:
        """Validate and decode; raises SecAggError on anything malformed."""
        tag = cls.TYPE
        d = _fields(d, tag, {"round", "shares"})
        return cls(
            _name(d["round"], tag, "round id"),
            _bytes_map(d["shares"], tag, "shares", SHARE_CIPHERTEXT_BYTES),
        )


@dataclass(frozen=True, eq=False)
class MaskedInput:
    """Stage 3 reply, device -> server: y = x + PRG(b) + sum of +-PRG(s_uv) mod 2^32."""

    TYPE: ClassVar[str] = "secagg/masked"
    round_id: str
    masked: Array  # uint32, length d

    def to_wire(self) -> dict[str, Any]:
        """Msgpack-friendly dict (the vector as little-endian uint32 bytes)."""
        return {
            "t": self.TYPE,
            "round": self.round_id,
            "y": self.masked.astype("<u4", copy=False).tobytes(),
        }

    @classmethod
    def from_wire(cls, d: Any) -> Self:
        """Validate and decode (zero-copy view of the bytes); SecAggError if malformed."""
        tag = cls.TYPE
        d = _fields(d, tag, {"round", "y"})
        y = d["y"]
        if not isinstance(y, bytes) or not y or len(y) % 4:
            raise SecAggError(f"{tag}: y must be a non-empty multiple of 4 bytes")
        return cls(_name(d["round"], tag, "round id"), np.frombuffer(y, dtype="<u4"))


@dataclass(frozen=True)
class UnmaskRequest:
    """Stage 4 request, server -> device: which of its neighbours survived and which dropped."""

    TYPE: ClassVar[str] = "secagg/unmask-request"
    round_id: str
    survivors: tuple[str, ...]  # send the b-share of these
    dropped: tuple[str, ...]  # send the s_sk-share of these

    def to_wire(self) -> dict[str, Any]:
        """Msgpack-friendly dict."""
        return {
            "t": self.TYPE,
            "round": self.round_id,
            "survivors": list(self.survivors),
            "dropped": list(self.dropped),
        }

    @classmethod
    def from_wire(cls, d: Any) -> Self:
        """Validate and decode; raises SecAggError on anything malformed."""
        tag = cls.TYPE
        d = _fields(d, tag, {"round", "survivors", "dropped"})
        return cls(
            _name(d["round"], tag, "round id"),
            _names(d["survivors"], tag, "survivors"),
            _names(d["dropped"], tag, "dropped"),
        )


@dataclass(frozen=True)
class UnmaskResponse:
    """Stage 4 reply, device -> server: b-shares of survivors, s_sk-shares of dropped peers."""

    TYPE: ClassVar[str] = "secagg/unmask"
    round_id: str
    seed_shares: dict[str, bytes]  # survivor -> 66-byte share of its b
    key_shares: dict[str, bytes]  # dropped peer -> 66-byte share of its s_sk

    def to_wire(self) -> dict[str, Any]:
        """Msgpack-friendly dict."""
        return {
            "t": self.TYPE,
            "round": self.round_id,
            "b": dict(self.seed_shares),
            "s": dict(self.key_shares),
        }

    @classmethod
    def from_wire(cls, d: Any) -> Self:
        """Validate and decode; raises SecAggError on anything malformed."""
        tag = cls.TYPE
        d = _fields(d, tag, {"round", "b", "s"})
        return cls(
            _name(d["round"], tag, "round id"),
            _bytes_map(d["b"], tag, "b", SHARE_BYTES),
            _bytes_map(d["s"], tag, "s", SHARE_BYTES),
        )


Message = (
    AdvertiseKeys
    | Roster
    | ShareKeys
    | MaskedInputRequest
    | MaskedInput
    | UnmaskRequest
    | UnmaskResponse
)
_BY_TYPE: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        AdvertiseKeys,
        Roster,
        ShareKeys,
        MaskedInputRequest,
        MaskedInput,
        UnmaskRequest,
        UnmaskResponse,
    )
}


def decode_message(d: Any) -> Message:
    """Decode any SecAgg wire dict by its ``t`` field; SecAggError if unknown or malformed."""
    tag = d.get("t") if isinstance(d, dict) else None
    if not isinstance(tag, str) or tag not in _BY_TYPE:
        raise SecAggError("not a secure-aggregation message (unknown or missing 't')")
    return _BY_TYPE[tag].from_wire(d)
