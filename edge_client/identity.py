"""Device identity: a per-device Ed25519 key and the fleet enrolment authority's certificate."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from fedge.edge_client.errors import ConfigError, ProtocolError, SecAggError
from fedge.edge_client.names import check_name

CERT_DOMAIN = b"fedge/identity-certificate/v1"
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def canonical_bytes(domain: bytes, *fields: bytes | str | int) -> bytes:
    """Encode ``fields`` unambiguously (4-byte length prefix each) after a domain tag.

    Used for everything that is signed, hashed or bound as AEAD associated data, so two
    different field tuples can never encode to the same bytes.
    """
    parts = [len(domain).to_bytes(4, "big"), domain]
    for field in fields:
        if isinstance(field, str):
            raw = field.encode("utf-8")
        elif isinstance(field, int):
            raw = field.to_bytes(8, "big", signed=True)
        else:
            raw = bytes(field)
        parts.append(len(raw).to_bytes(4, "big"))
        parts.append(raw)
    return b"".join(parts)


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """Return the raw 32-byte Ed25519 public key of ``key``."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _load_private_pem(path: Path) -> Ed25519PrivateKey:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"identity key {path} is accessible by group/others (mode {mode:o}); chmod 600 it"
        )
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"identity key {path} is not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"identity key {path} is not an Ed25519 key")
    return key


def load_or_create_identity(path: Path) -> Ed25519PrivateKey:
    """Load the device's Ed25519 identity key, creating it (PEM, mode 0600) on first start.

    Parameters
    ----------
    path
        File of the PKCS#8 PEM key, usually ``<state_dir>/identity.pem``.

    Returns
    -------
    Ed25519PrivateKey
        The device's long-term identity key.

    Raises
    ------
    ConfigError
        If the file exists but is unreadable, not Ed25519, or readable by others.
    """
    path = Path(path)
    if path.exists():
        return _load_private_pem(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return _load_private_pem(path)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    return key


def load_enrolment_public_key(path: Path) -> Ed25519PublicKey:
    """Read the fleet enrolment authority's Ed25519 public key (PEM SubjectPublicKeyInfo)."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except FileNotFoundError as exc:
        raise ConfigError(f"enrolment public key not found: {path}") from exc
    except ValueError as exc:
        raise ConfigError(f"enrolment public key {path} is not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"enrolment public key {path} is not an Ed25519 key")
    return key


@dataclass(frozen=True)
class IdentityCertificate:
    """The enrolment authority's signature binding (fleet, device_id) to an identity key."""

    fleet: str
    device_id: str
    identity_public_key: bytes
    signature: bytes

    def signed_bytes(self) -> bytes:
        """The exact bytes the enrolment authority signs."""
        return canonical_bytes(CERT_DOMAIN, self.fleet, self.device_id, self.identity_public_key)

    def to_wire(self) -> dict[str, Any]:
        """Msgpack-friendly dict."""
        return {
            "fleet": self.fleet,
            "device": self.device_id,
            "key": self.identity_public_key,
            "sig": self.signature,
        }

    @classmethod
    def from_wire(cls, d: Any) -> Self:
        """Validate and decode; raises SecAggError on anything malformed."""
        if not isinstance(d, dict) or set(d) != {"fleet", "device", "key", "sig"}:
            raise SecAggError("identity certificate must be a dict with fleet, device, key, sig")
        fleet, device, key, sig = d["fleet"], d["device"], d["key"], d["sig"]
        try:
            check_name("fleet", fleet)
            check_name("device id", device)
        except ProtocolError as exc:
            raise SecAggError(f"identity certificate: {exc}") from exc
        if not isinstance(key, bytes) or len(key) != PUBLIC_KEY_BYTES:
            raise SecAggError("identity certificate: key must be 32 bytes")
        if not isinstance(sig, bytes) or len(sig) != SIGNATURE_BYTES:
            raise SecAggError("identity certificate: sig must be 64 bytes")
        return cls(fleet, device, key, sig)


def issue_identity_certificate(
    enrolment_private_key: Ed25519PrivateKey,
    fleet: str,
    device_id: str,
    identity_public_key: Ed25519PublicKey | bytes,
) -> IdentityCertificate:
    """Sign (fleet, device_id, identity key) with the fleet enrolment authority's key.

    Raises
    ------
    ProtocolError
        If ``fleet`` or ``device_id`` is not a valid name.
    SecAggError
        If the identity key is not 32 raw bytes.
    """
    check_name("fleet", fleet)
    check_name("device id", device_id)
    raw = (
        public_key_bytes(identity_public_key)
        if isinstance(identity_public_key, Ed25519PublicKey)
        else bytes(identity_public_key)
    )
    if len(raw) != PUBLIC_KEY_BYTES:
        raise SecAggError("identity public key must be 32 raw bytes")
    unsigned = IdentityCertificate(fleet, device_id, raw, b"")
    return IdentityCertificate(
        fleet, device_id, raw, enrolment_private_key.sign(unsigned.signed_bytes())
    )


def verify_identity_certificate(
    enrolment_public_key: Ed25519PublicKey,
    cert: IdentityCertificate,
    *,
    fleet: str | None = None,
    device_id: str | None = None,
    identity_public_key: bytes | None = None,
) -> None:
    """Check the enrolment signature on ``cert`` and, if given, the expected bound values.

    Raises
    ------
    SecAggError
        If the signature is invalid or the certificate names another fleet, device or key.
    """
    if fleet is not None and cert.fleet != fleet:
        raise SecAggError(f"certificate is for fleet {cert.fleet!r}, expected {fleet!r}")
    if device_id is not None and cert.device_id != device_id:
        raise SecAggError(f"certificate is for device {cert.device_id!r}, expected {device_id!r}")
    if identity_public_key is not None and cert.identity_public_key != identity_public_key:
        raise SecAggError(f"certificate of {cert.device_id!r} certifies another identity key")
    try:
        enrolment_public_key.verify(cert.signature, cert.signed_bytes())
    except InvalidSignature as exc:
        raise SecAggError(
            f"identity certificate of {cert.device_id!r} has an invalid enrolment signature"
        ) from exc
