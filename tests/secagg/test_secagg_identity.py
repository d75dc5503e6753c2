"""Device identity keys on disk and enrolment certificates."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedge.edge_client.errors import ConfigError, ProtocolError, SecAggError
from fedge.edge_client.identity import (
    IdentityCertificate,
    canonical_bytes,
    issue_identity_certificate,
    load_enrolment_public_key,
    load_or_create_identity,
    public_key_bytes,
    verify_identity_certificate,
)


def test_identity_is_created_once_with_private_permissions(tmp_path: Path) -> None:
    path = tmp_path / "state" / "identity.pem"
    key = load_or_create_identity(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    again = load_or_create_identity(path)
    assert public_key_bytes(again) == public_key_bytes(key)


def test_identity_file_problems_are_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "identity.pem"
    load_or_create_identity(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_or_create_identity(path)
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a key")
    os.chmod(garbage, 0o600)
    with pytest.raises(ConfigError, match="PEM"):
        load_or_create_identity(garbage)
    other = tmp_path / "x25519.pem"
    other.write_bytes(
        X25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(other, 0o600)
    with pytest.raises(ConfigError, match="not an Ed25519"):
        load_or_create_identity(other)


def test_enrolment_public_key_loading(tmp_path: Path) -> None:
    authority = Ed25519PrivateKey.generate()
    path = tmp_path / "enrolment.pub"
    path.write_bytes(
        authority.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert public_key_bytes(load_enrolment_public_key(path)) == public_key_bytes(authority)
    with pytest.raises(ConfigError, match="not found"):
        load_enrolment_public_key(tmp_path / "missing.pub")
    path.write_bytes(b"junk")
    with pytest.raises(ConfigError, match="not a PEM"):
        load_enrolment_public_key(path)


def test_certificate_issue_verify_and_tamper() -> None:
    authority = Ed25519PrivateKey.generate()
    device = Ed25519PrivateKey.generate()
    cert = issue_identity_certificate(authority, "fleet", "dev-1", device.public_key())
    verify_identity_certificate(
        authority.public_key(),
        cert,
        fleet="fleet",
        device_id="dev-1",
        identity_public_key=public_key_bytes(device),
    )
    assert IdentityCertificate.from_wire(cert.to_wire()) == cert
    bad_sig = bytearray(cert.signature)
    bad_sig[3] ^= 1
    variants = [
        IdentityCertificate(cert.fleet, cert.device_id, cert.identity_public_key, bytes(bad_sig)),
        IdentityCertificate(cert.fleet, "dev-2", cert.identity_public_key, cert.signature),
        IdentityCertificate("other", cert.device_id, cert.identity_public_key, cert.signature),
        IdentityCertificate(cert.fleet, cert.device_id, bytes(32), cert.signature),
    ]
    for forged in variants:
        with pytest.raises(SecAggError, match="invalid enrolment signature"):
            verify_identity_certificate(authority.public_key(), forged)
    with pytest.raises(SecAggError, match="invalid enrolment signature"):
        verify_identity_certificate(Ed25519PrivateKey.generate().public_key(), cert)
    with pytest.raises(SecAggError, match="expected 'dev-9'"):
        verify_identity_certificate(authority.public_key(), cert, device_id="dev-9")
    with pytest.raises(SecAggError, match="expected 'f2'"):
        verify_identity_certificate(authority.public_key(), cert, fleet="f2")
    with pytest.raises(SecAggError, match="another identity key"):
        verify_identity_certificate(authority.public_key(), cert, identity_public_key=bytes(32))


def test_certificate_input_validation() -> None:
    authority = Ed25519PrivateKey.generate()
    with pytest.raises(ProtocolError, match="device id"):
        issue_identity_certificate(authority, "fleet", "bad/id", bytes(32))
    with pytest.raises(SecAggError, match="32 raw bytes"):
        issue_identity_certificate(authority, "fleet", "dev", bytes(31))
    wire = issue_identity_certificate(authority, "fleet", "dev", bytes(32)).to_wire()
    for key, value in [("key", b"x"), ("sig", "text"), ("fleet", 3)]:
        with pytest.raises(SecAggError):
            IdentityCertificate.from_wire({**wire, key: value})
    with pytest.raises(SecAggError):
        IdentityCertificate.from_wire([1, 2])


def test_canonical_bytes_is_unambiguous() -> None:
    assert canonical_bytes(b"d", "ab", "c") != canonical_bytes(b"d", "a", "bc")
    assert canonical_bytes(b"d", b"x") != canonical_bytes(b"e", b"x")
    assert canonical_bytes(b"d", 1) != canonical_bytes(b"d", 2)
