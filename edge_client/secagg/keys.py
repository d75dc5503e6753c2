"""Key derivation and share encryption of SecAgg: X25519, HKDF-SHA256 and AES-256-GCM."""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedge.edge_client.errors import SecAggError
from fedge.edge_client.identity import canonical_bytes
from fedge.edge_client.secagg.shamir import SHARE_BYTES

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
SHARE_PLAINTEXT_BYTES = 2 * SHARE_BYTES
SHARE_CIPHERTEXT_BYTES = NONCE_BYTES + SHARE_PLAINTEXT_BYTES + TAG_BYTES

_SELF_MASK = b"fedge/secagg/v1/self-mask"
_PAIR_MASK = b"fedge/secagg/v1/pair-mask"
_SHARE_KEY = b"fedge/secagg/v1/share-key"
_SHARE_AAD = b"fedge/secagg/v1/share-aad"
_SEED_COMMIT = b"fedge/secagg/v1/seed-commitment"


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(secret)


def x25519_public_bytes(key: X25519PrivateKey) -> bytes:
    """Raw 32-byte public key of an X25519 private key."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def x25519_private_bytes(key: X25519PrivateKey) -> bytes:
    """Raw 32-byte private key (what gets Shamir-shared for the masking key)."""
    return key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


def agree(private_key: X25519PrivateKey, peer_public: bytes) -> bytes:
    """X25519 shared secret with a peer's raw public key; SecAggError on a degenerate key."""
    try:
        return private_key.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # all-zero shared secret: a small-order public key
        raise SecAggError("peer public key is invalid (small-order X25519 point)") from exc


def self_mask_key(seed: bytes, round_id: str, device_id: str) -> bytes:
    """AES key of the PRG that expands a device's self-mask seed b."""
    return _hkdf(seed, canonical_bytes(_SELF_MASK, round_id, device_id))


def pair_mask_key(shared_secret: bytes, round_id: str, a: str, b: str) -> bytes:
    """AES key of the PRG of the pairwise mask between devices a and b (order-free)."""
    lo, hi = sorted((a, b))
    return _hkdf(shared_secret, canonical_bytes(_PAIR_MASK, round_id, lo, hi))


def pair_mask_sign(device_id: str, peer_id: str) -> int:
    """+1 if ``device_id`` adds the pairwise mask shared with ``peer_id``, -1 if it subtracts."""
    return 1 if device_id < peer_id else -1


def seed_commitment(seed: bytes, round_id: str, device_id: str) -> bytes:
    """SHA-256 commitment to a self-mask seed, signed in AdvertiseKeys and checked on unmask."""
    return hashlib.sha256(canonical_bytes(_SEED_COMMIT, round_id, device_id, seed)).digest()


def share_key(shared_secret: bytes, round_id: str, sender: str, recipient: str) -> bytes:
    """AES-256-GCM key for shares travelling from ``sender`` to ``recipient`` (one direction)."""
    return _hkdf(shared_secret, canonical_bytes(_SHARE_KEY, round_id, sender, recipient))


def _share_aad(round_id: str, sender: str, recipient: str) -> bytes:
    return canonical_bytes(_SHARE_AAD, round_id, sender, recipient)


def encrypt_shares(
    key: bytes, round_id: str, sender: str, recipient: str, seed_share: bytes, key_share: bytes
) -> bytes:
    """Encrypt the (b-share, s_sk-share) pair for one recipient: nonce || ciphertext || tag."""
    if len(seed_share) != SHARE_BYTES or len(key_share) != SHARE_BYTES:
        raise SecAggError(f"share values must be {SHARE_BYTES} bytes")
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(
        nonce, seed_share + key_share, _share_aad(round_id, sender, recipient)
    )
    return nonce + sealed


def decrypt_shares(
    key: bytes, round_id: str, sender: str, recipient: str, blob: bytes
) -> tuple[bytes, bytes]:
    """Inverse of :func:`encrypt_shares`; SecAggError if tampered, misrouted or replayed."""
    if len(blob) != SHARE_CIPHERTEXT_BYTES:
        raise SecAggError(f"share ciphertext from {sender!r} has the wrong length {len(blob)}")
    try:
        plain = AESGCM(key).decrypt(
            blob[:NONCE_BYTES], blob[NONCE_BYTES:], _share_aad(round_id, sender, recipient)
        )
    except InvalidTag as exc:
        raise SecAggError(
            f"share ciphertext from {sender!r} failed authentication (tampered, misrouted "
            "or from another round)"
        ) from exc
    return plain[:SHARE_BYTES], plain[SHARE_BYTES:]
