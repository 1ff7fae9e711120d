"""Throw-away TLS certificates and SuperNode keys for `deploy-local --tls / --auth`.

Everything is made with the `cryptography` package (no `openssl` / `ssh-keygen` needed) and is meant
for a rehearsal on loopback only: a self-signed CA that lives one day, a server certificate it signs
for 127.0.0.1 and localhost, and EC key pairs in the OpenSSH format that Flower's SuperNode
authentication reads (`--auth-supernode-private-key`, `flwr supernode register KEY.pub`).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Names the loopback server certificate is valid for (the SuperExec dials 127.0.0.1).
LOOPBACK_NAMES = ("127.0.0.1", "localhost")
VALIDITY = dt.timedelta(days=1)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: `ca` (trusted by nodes and `flwr`), `cert` + `key` (the SuperLink's)."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class NodeKey:
    """A SuperNode's EC P-384 key pair in OpenSSH format: `private` for the node, `public` to register."""

    private: Path
    public: Path


def make_tls(folder: Path, names: tuple[str, ...] = LOOPBACK_NAMES) -> TlsFiles:
    """Write a fresh CA (`ca.crt`) and a server certificate it signs (`server.pem`, `server.key`).

    `names` become the certificate's subject alternative names (IP addresses where they parse as
    one, DNS names otherwise). Private keys are written mode 0600. Raises ValueError on no names.
    """
    if not names:
        raise ValueError("a server certificate needs at least one name (e.g. 127.0.0.1)")
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)  # tolerate small clock skew
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mas-flower deploy-local throw-away CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(now + VALIDITY)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + VALIDITY)
            .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = TlsFiles(folder / "ca.crt", folder / "server.pem", folder / "server.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(files.key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    return files


def make_node_key(private: Path) -> NodeKey:
    """Write an EC P-384 key pair: `private` (OpenSSH private key, 0600) and `private`.pub."""
    key = ec.generate_private_key(ec.SECP384R1())
    pair = NodeKey(private, private.with_name(private.name + ".pub"))
    private.parent.mkdir(parents=True, exist_ok=True)
    _write_private(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                              serialization.NoEncryption()))
    pair.public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                          serialization.PublicFormat.OpenSSH) + b"\n")
    return pair


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
