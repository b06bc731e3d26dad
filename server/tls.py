"""TLS for both servers and for nachbar-ai's link to nachbar-db.

Files are checked when the server starts (readable, PEM, the key belongs to the certificate),
so a mistake stops it with a message naming the file instead of failing every handshake later.
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:  # exposure imports this module
    from nachbar.server.exposure import DBLinkConfig


def read_pem(path: Path, what: str, flag: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SystemExit(f"{flag} {path}: cannot read the {what} ({error.strerror})") from None
    if b"-----BEGIN " not in data:
        raise SystemExit(f"{flag} {path}: the {what} is not a PEM file")
    return data


def check_pair(cert: Path, key: Path) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as error:
        raise SystemExit(
            f"--tls-key {key} does not belong to --tls-cert {cert} or cannot be read "
            f"({error.reason or error}); pass the private key of that certificate"
        ) from None


def server_credentials(
    cert: Path, key: Path, client_ca: Path | None = None
) -> grpc.ServerCredentials:
    """TLS with `cert`/`key`; with `client_ca`, clients must present a certificate it signed."""
    cert_pem = read_pem(cert, "certificate", "--tls-cert")
    key_pem = read_pem(key, "private key", "--tls-key")
    check_pair(cert, key)
    ca_pem = read_pem(client_ca, "client CA", "--tls-client-ca") if client_ca else None
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=ca_pem is not None
    )


def db_link_credentials(link: DBLinkConfig) -> grpc.ChannelCredentials | None:
    """TLS for nachbar-ai's channel to nachbar-db; None for plaintext. The system's CAs when
    only a client certificate is given."""
    if not link.tls:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(link.tls_ca, "CA", "--db-tls-ca") if link.tls_ca else None,
        private_key=read_pem(link.tls_key, "private key", "--db-tls-key") if link.tls_key else None,
        certificate_chain=read_pem(link.tls_cert, "certificate", "--db-tls-cert")
        if link.tls_cert
        else None,
    )


def is_loopback(host: str) -> bool:
    """True when `host` is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name, or "" / "0.0.0.0" style wildcards: beyond loopback
