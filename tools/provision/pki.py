"""The fleet's X.509 material: a private CA, TLS server certificates, client certificates."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedge.edge_client.errors import ConfigError

CA_VALID_DAYS = 3650
LEAF_VALID_DAYS = 1826
CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class CertAuthority:
    """The fleet CA: its certificate and signing key (ECDSA P-256)."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(common_name: str, fleet: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedge"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, fleet),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _validity(days: int) -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    return now - CLOCK_SKEW, now + dt.timedelta(days=days)


def new_ca(fleet: str) -> CertAuthority:
    """Create a self-signed CA for ``fleet`` (path length 0: it signs leaf certificates only).

    Parameters
    ----------
    fleet : str
        Fleet name, recorded in the CA's subject.

    Returns
    -------
    CertAuthority
        The new CA certificate and its private key.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"fedge {fleet} CA", fleet)
    start, end = _validity(CA_VALID_DAYS)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertAuthority(cert=cert, key=key)


def load_ca(cert_path: Path, key_path: Path) -> CertAuthority:
    """Read an existing fleet CA from its PEM files.

    Raises
    ------
    ConfigError
        If a file is missing, unreadable, or the key does not belong to the certificate.
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot load the fleet CA ({cert_path}, {key_path}): {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise ConfigError(f"{key_path} is not the private key of {cert_path}")
    return CertAuthority(cert=cert, key=key)


_DNS_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def _host_entry(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host.rstrip(".").lower()
    if not name or len(name) > 253 or not all(_DNS_LABEL.match(lb) for lb in name.split(".")):
        raise ConfigError(f"invalid host name {host!r}: not an IP address or DNS name")
    return x509.DNSName(name)


def host_names(hosts: list[str]) -> list[x509.GeneralName]:
    """Turn host strings (IP addresses or DNS names) into SubjectAltName entries, deduplicated.

    Raises
    ------
    ConfigError
        If a host is neither an IP address nor a valid DNS name.
    """
    out: list[x509.GeneralName] = []
    for host in hosts:
        entry = _host_entry(host)
        if entry not in out:
            out.append(entry)
    return out


def _leaf(
    ca: CertAuthority,
    common_name: str,
    fleet: str,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName],
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(LEAF_VALID_DAYS)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, fleet))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(min(end, ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
    )
    return builder.sign(ca.key, hashes.SHA256()), key


def issue_server_cert(
    ca: CertAuthority, common_name: str, fleet: str, hosts: list[str]
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Issue a TLS server certificate valid for every host in ``hosts`` (SubjectAltName).

    Parameters
    ----------
    ca : CertAuthority
        The signing CA.
    common_name : str
        Subject CN (informational; clients check the SubjectAltName).
    fleet : str
        Fleet name, recorded in the subject.
    hosts : list of str
        IP addresses and DNS names clients use to reach the server.

    Returns
    -------
    tuple
        The certificate and its new private key.
    """
    if not hosts:
        raise ConfigError("a server certificate needs at least one host name")
    return _leaf(ca, common_name, fleet, ExtendedKeyUsageOID.SERVER_AUTH, host_names(hosts))


def issue_client_cert(
    ca: CertAuthority, common_name: str, fleet: str
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Issue a TLS client certificate; the broker uses its CN as the MQTT user name.

    The SubjectAltName carries the same identity as ``urn:fedge:{fleet}:{common_name}``.

    Parameters
    ----------
    ca : CertAuthority
        The signing CA.
    common_name : str
        The account name (device id, or the server account).
    fleet : str
        Fleet name, recorded in the subject.

    Returns
    -------
    tuple
        The certificate and its new private key.
    """
    uri = x509.UniformResourceIdentifier(f"urn:fedge:{fleet}:{common_name}")
    return _leaf(ca, common_name, fleet, ExtendedKeyUsageOID.CLIENT_AUTH, [uri])


def new_ed25519() -> ed25519.Ed25519PrivateKey:
    """A fresh Ed25519 key (device identity, model signing, fleet enrolment)."""
    return ed25519.Ed25519PrivateKey.generate()


def private_pem(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    """PKCS8 PEM of a private key, unencrypted (protected by file permissions)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(key: ed25519.Ed25519PrivateKey) -> bytes:
    """SubjectPublicKeyInfo PEM of the public half of ``key``."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    """PEM encoding of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)
