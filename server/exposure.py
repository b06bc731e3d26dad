"""Flags that decide how a server is exposed: TLS, API keys, the metrics port, and nachbar-ai's
credentials for nachbar-db. Kept apart from config.py, which adds them with one call each.

The default is the safe one for a laptop: loopback only, no keys, no TLS, no metrics port. A
server that listens beyond loopback with API keys but without TLS refuses to start unless
`--insecure` says the keys may travel in clear text.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from nachbar.server.tls import is_loopback


def _env(name: str) -> str | None:
    return os.environ.get(f"NACHBAR_{name}") or None


def _env_path(name: str) -> Path | None:
    raw = _env(name)
    return Path(raw) if raw else None


@dataclass(frozen=True)
class ExposureConfig:
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    api_keys_file: Path | None = None
    insecure: bool = False
    metrics_port: int | None = None  # None: no metrics endpoint; 0: any free port
    metrics_host: str = "127.0.0.1"

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


@dataclass(frozen=True)
class DBLinkConfig:
    """How nachbar-ai reaches nachbar-db: TLS files and the service key it sends."""

    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    api_key: str = field(default="", repr=False)

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None or self.tls_cert is not None


def add_exposure_flags(parser: argparse.ArgumentParser, prefix: str) -> None:
    group = parser.add_argument_group("TLS, API keys and metrics")
    group.add_argument(
        "--tls-cert",
        type=Path,
        default=_env_path("TLS_CERT"),
        metavar="PEM",
        help="serve TLS with this certificate (chain) [env NACHBAR_TLS_CERT]",
    )
    group.add_argument(
        "--tls-key",
        type=Path,
        default=_env_path("TLS_KEY"),
        metavar="PEM",
        help="private key of --tls-cert [env NACHBAR_TLS_KEY]",
    )
    group.add_argument(
        "--tls-client-ca",
        type=Path,
        default=_env_path("TLS_CLIENT_CA"),
        metavar="PEM",
        help="mutual TLS: accept only clients whose certificate this CA signed "
        "[env NACHBAR_TLS_CLIENT_CA]",
    )
    group.add_argument(
        "--api-keys-file",
        type=Path,
        default=_env_path("API_KEYS_FILE"),
        metavar="PATH",
        help="require an API key on every call but health checks; the file holds key hashes, "
        "roles and store scopes (`nachbar keys create`), reread when it changes "
        "[env NACHBAR_API_KEYS_FILE]",
    )
    group.add_argument(
        "--insecure",
        action=argparse.BooleanOptionalAction,
        default=(_env("INSECURE") or "").lower() in {"1", "true", "yes", "on"},
        help="allow API keys without TLS on a non-loopback interface: keys then travel in "
        "clear text [env NACHBAR_INSECURE]",
    )
    group.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env(f"{prefix}_METRICS_PORT") or -1),
        metavar="PORT",
        help="serve Prometheus metrics at http://METRICS_HOST:PORT/metrics; -1: off, 0: any "
        f"free port [env NACHBAR_{prefix}_METRICS_PORT]",
    )
    group.add_argument(
        "--metrics-host",
        default=_env("METRICS_HOST") or "127.0.0.1",
        help="interface of the metrics endpoint (it has no authentication) "
        "[env NACHBAR_METRICS_HOST]",
    )


def exposure_config(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> ExposureConfig:
    if (ns.tls_cert is None) != (ns.tls_key is None):
        parser.error("--tls-cert and --tls-key go together; pass both or neither")
    if ns.tls_client_ca is not None and ns.tls_cert is None:
        parser.error("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    beyond_loopback = not is_loopback(ns.host)
    clear_text_keys = ns.api_keys_file is not None and ns.tls_cert is None and beyond_loopback
    if clear_text_keys and not ns.insecure:
        parser.error(
            f"--api-keys-file without TLS on {ns.host or 'every interface'}: API keys would "
            "travel in clear text. Add --tls-cert/--tls-key, listen on 127.0.0.1, or pass "
            "--insecure to accept that"
        )
    if ns.metrics_port < -1 or ns.metrics_port > 65535:
        parser.error(f"--metrics-port must be -1 (off) or a port, got {ns.metrics_port}")
    return ExposureConfig(
        tls_cert=ns.tls_cert,
        tls_key=ns.tls_key,
        tls_client_ca=ns.tls_client_ca,
        api_keys_file=ns.api_keys_file,
        insecure=ns.insecure,
        metrics_port=None if ns.metrics_port < 0 else ns.metrics_port,
        metrics_host=ns.metrics_host,
    )


def add_db_link_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("link to nachbar-db")
    group.add_argument(
        "--db-tls-ca",
        type=Path,
        default=_env_path("DB_TLS_CA"),
        metavar="PEM",
        help="reach nachbar-db over TLS, trusting this CA [env NACHBAR_DB_TLS_CA]",
    )
    group.add_argument(
        "--db-tls-cert",
        type=Path,
        default=_env_path("DB_TLS_CERT"),
        metavar="PEM",
        help="client certificate for nachbar-db's mutual TLS [env NACHBAR_DB_TLS_CERT]",
    )
    group.add_argument(
        "--db-tls-key",
        type=Path,
        default=_env_path("DB_TLS_KEY"),
        metavar="PEM",
        help="private key of --db-tls-cert [env NACHBAR_DB_TLS_KEY]",
    )
    group.add_argument(
        "--db-api-key-file",
        type=Path,
        default=_env_path("DB_API_KEY_FILE"),
        metavar="PATH",
        help="file holding the API key nachbar-ai sends to nachbar-db (or the key itself in "
        "env NACHBAR_DB_API_KEY) [env NACHBAR_DB_API_KEY_FILE]",
    )


def db_link_config(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> DBLinkConfig:
    if (ns.db_tls_cert is None) != (ns.db_tls_key is None):
        parser.error("--db-tls-cert and --db-tls-key go together; pass both or neither")
    api_key = os.environ.get("NACHBAR_DB_API_KEY", "").strip()
    if ns.db_api_key_file is not None:
        try:
            api_key = ns.db_api_key_file.read_text(encoding="utf-8").strip()
        except OSError as error:
            parser.error(f"--db-api-key-file {ns.db_api_key_file}: {error.strerror}")
        if not api_key:
            parser.error(f"--db-api-key-file {ns.db_api_key_file} is empty")
    link = DBLinkConfig(
        tls_ca=ns.db_tls_ca, tls_cert=ns.db_tls_cert, tls_key=ns.db_tls_key, api_key=api_key
    )
    if api_key and not link.tls and not is_loopback(ns.db_host) and not ns.insecure:
        parser.error(
            f"an API key for nachbar-db at {ns.db_host} without TLS would travel in clear "
            "text; add --db-tls-ca, or pass --insecure to accept that"
        )
    return link
