"""Ed25519 signatures over content-addressed blobs (model artifacts, manifests, weights)."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedge.edge_client.errors import ArtifactError

_DOMAIN = b"fedge-blob-v1\x00"


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _message(kind: str, digest: str) -> bytes:
    return _DOMAIN + kind.encode() + b"\x00" + bytes.fromhex(digest)


def sign_blob(key: Ed25519PrivateKey, kind: str, digest: str) -> bytes:
    """Sign the sha256 ``digest`` of a blob of the given kind (model, manifest, weights)."""
    return key.sign(_message(kind, digest))


def verify_blob(
    public_key: Ed25519PublicKey, kind: str, data: bytes, expected_digest: str, signature: bytes
) -> None:
    """Check that ``data`` has the expected digest and that the server signed it; else raise."""
    digest = sha256_hex(data)
    if digest != expected_digest:
        raise ArtifactError(
            f"{kind}: sha256 {digest[:12]}... does not match {expected_digest[:12]}..."
        )
    raw_key = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if not _signature_valid(raw_key, _message(kind, digest), signature):
        raise ArtifactError(f"{kind} {digest[:12]}...: bad signature (not signed by the server)")


@functools.lru_cache(maxsize=4096)
def _signature_valid(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Ed25519 verification, remembered: the answer depends on nothing else, and the agents of
    a simulator process all check the same few (blob, signature) pairs every round."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except InvalidSignature:
        return False
    return True


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load the server's Ed25519 key, creating it (0600) on first start."""
    path = Path(path)
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ArtifactError(f"{path} is not an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    path.with_suffix(".pub").write_bytes(public_pem(key.public_key()))
    return key


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    """PEM (SubjectPublicKeyInfo) of an Ed25519 public key."""
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(data: bytes) -> Ed25519PublicKey:
    """Parse a PEM Ed25519 public key."""
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise ArtifactError("not an Ed25519 public key")
    return key
