"""This device's identity files (key, certificate, enrolment key), as its device.toml names them."""

from __future__ import annotations

from pathlib import Path

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedge.edge_client.config import DeviceConfig
from fedge.edge_client.errors import SecAggError
from fedge.edge_client.identity import (
    IdentityCertificate,
    load_enrolment_public_key,
    load_or_create_identity,
    public_key_bytes,
)


class DeviceIdentity:
    """This device's identity files, as its `DeviceConfig` names them, read when first needed.

    The Ed25519 key (created in the state dir on first use) signs its secure-aggregation keys
    and travels with each check-in; the enrolment authority's key and this device's
    certificate, when provisioned, let its peers and the server check who it is.
    """

    def __init__(
        self,
        key_file: Path,
        cert_file: Path | None = None,
        enrolment_key_file: Path | None = None,
    ):
        self.key_file = key_file
        self.cert_file = cert_file
        self.enrolment_key_file = enrolment_key_file
        self._key: Ed25519PrivateKey | None = None

    @classmethod
    def from_config(cls, config: DeviceConfig) -> DeviceIdentity:
        """The identity files of ``config`` (the key defaults to ``<state_dir>/identity.key``)."""
        key_file = config.identity_key_file or Path(config.state_dir) / "identity.key"
        return cls(key_file, config.identity_cert_file, config.enrolment_key_file)

    @property
    def key(self) -> Ed25519PrivateKey:
        """The device's Ed25519 identity key, created on first use."""
        if self._key is None:
            self._key = load_or_create_identity(self.key_file)
        return self._key

    def public_key(self) -> bytes:
        """The raw 32-byte public half of `key`."""
        raw: bytes = public_key_bytes(self.key)
        return raw

    def certificate_bytes(self) -> bytes | None:
        """The certificate file as provisioned (a check-in carries it), if there is one."""
        path = self.cert_file
        return path.read_bytes() if path is not None and path.exists() else None

    def certificate(self) -> IdentityCertificate | None:
        """The decoded certificate; SecAggError if the configured file is unreadable."""
        path = self.cert_file
        if path is None:
            return None
        try:
            return IdentityCertificate.from_wire(msgpack.unpackb(path.read_bytes()))
        except (OSError, ValueError) as exc:
            raise SecAggError(f"cannot read the identity certificate {path}: {exc}") from exc

    def enrolment_key(self) -> Ed25519PublicKey | None:
        """The fleet enrolment authority's public key, if this device was given one."""
        path = self.enrolment_key_file
        return load_enrolment_public_key(path) if path is not None else None
