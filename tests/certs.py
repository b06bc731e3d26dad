"""Certificates made at test time: a CA, a server certificate for the loopback names, and client
certificates, with the `cryptography` package.

`python -m tests.certs DIR` writes a set into DIR (the TypeScript tests use it).
"""

from __future__ import annotations

import datetime
import ipaddress
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK_NAMES = ("localhost",)
LOOPBACK_IPS = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


@dataclass(frozen=True)
class CertSet:
    ca: Path  # signs everything below
    server: Issued
    client: Issued  # signed by `ca`
    other_ca: Path  # an unrelated CA
    stranger: Issued  # a client certificate signed by `other_ca`


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(
        now + datetime.timedelta(days=2)
    )


def make_ca(
    directory: Path, stem: str
) -> tuple[Path, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{stem} test CA"))
        .issuer_name(_name(f"{stem} test CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
    )
    cert = _validity(builder).sign(key, hashes.SHA256())
    path = directory / f"{stem}-ca.pem"
    _write_cert(cert, path)
    return path, cert, key


def issue(
    directory: Path,
    stem: str,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    server: bool,
    names: tuple[str, ...] = LOOPBACK_NAMES,
    ips: tuple[str, ...] = LOOPBACK_IPS,
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(stem))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    cert = _validity(builder).sign(ca_key, hashes.SHA256())
    issued = Issued(directory / f"{stem}.pem", directory / f"{stem}-key.pem")
    _write_cert(cert, issued.cert)
    _write_key(key, issued.key)
    return issued


def make_cert_set(directory: Path, *, server_names: tuple[str, ...] = LOOPBACK_NAMES) -> CertSet:
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_cert, ca_key = make_ca(directory, "nachbar")
    other_ca, other_cert, other_key = make_ca(directory, "other")
    return CertSet(
        ca=ca,
        server=issue(directory, "server", ca_cert, ca_key, server=True, names=server_names),
        client=issue(directory, "client", ca_cert, ca_key, server=False),
        other_ca=other_ca,
        stranger=issue(directory, "stranger", other_cert, other_key, server=False),
    )


if __name__ == "__main__":
    target = Path(sys.argv[1])
    made = make_cert_set(target)
    print(made.ca)
