"""`nachbar keys`, and the CLI against servers with TLS and API keys, started by `nachbar up`."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from nachbar.client import AIClient
from tests.certs import CertSet, make_cert_set
from tests.cli.conftest import TEXT_MODEL
from tests.cli.test_up import NACHBAR, Up, free_ports


def nachbar(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NACHBAR_")}
    return subprocess.run(
        [NACHBAR, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, "COLUMNS": "200", **(env or {})},
    )


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    made = nachbar("keys", "create", "--keys-file", str(path), "--role", "write", "--stores", "a*")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("nbk_")
    assert key not in path.read_text()
    assert "role write, stores a*" in made.stderr and "shown only now" in made.stderr

    env = {"NACHBAR_API_KEYS_FILE": str(path)}  # the env twin of --keys-file
    second = nachbar("keys", "create", "--role", "read", env=env)
    assert second.returncode == 0, second.stderr
    listed = json.loads(nachbar("keys", "list", "--json", env=env).stdout)
    assert [(k["role"], k["stores"]) for k in listed] == [("write", ["a*"]), ("read", [])]
    table = nachbar("keys", "list", env=env).stdout
    assert listed[0]["id"] in table and "a*" in table

    revoked = nachbar("keys", "revoke", listed[0]["id"], env=env)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert [k["id"] for k in json.loads(nachbar("keys", "list", "--json", env=env).stdout)] == [
        listed[1]["id"]
    ]
    missing = nachbar("keys", "revoke", "k-nope", env=env)
    assert missing.returncode == 1 and "no key 'k-nope'" in missing.stderr
    nowhere = nachbar("keys", "list")
    assert nowhere.returncode == 2 and "--keys-file" in nowhere.stderr


@pytest.fixture
def secure_stack(
    tmp_path: Path, model_dir: Path
) -> Iterator[tuple[Up, CertSet, str, str, str, str]]:
    """`nachbar up` with mutual TLS and API keys: (up, certs, db address, ai address, a write
    key, an admin key)."""
    certs = make_cert_set(tmp_path / "certs")
    keys = tmp_path / "keys.json"
    admin = nachbar("keys", "create", "--keys-file", str(keys), "--role", "admin")
    (tmp_path / "ai-to-db.key").write_text(admin.stdout.strip().splitlines()[-1])
    user = nachbar("keys", "create", "--keys-file", str(keys), "--role", "write")
    db_port, ai_port = free_ports(2)
    up = Up(
        [
            *("--db-port", str(db_port), "--ai-port", str(ai_port)),
            *("--data-dir", str(tmp_path / "data"), "--model-dir", str(model_dir)),
            *("--no-build", "--models", TEXT_MODEL),
            *("--tls-cert", str(certs.server.cert), "--tls-key", str(certs.server.key)),
            *("--tls-client-ca", str(certs.ca), "--tls-ca", str(certs.ca)),
            *("--tls-client-cert", str(certs.client.cert)),
            *("--tls-client-key", str(certs.client.key)),
            *("--api-keys-file", str(keys), "--db-api-key-file", str(tmp_path / "ai-to-db.key")),
        ],
        tmp_path / "up.log",
    )
    try:
        up.wait_for_line("press Ctrl-C to stop")
        key = user.stdout.strip().splitlines()[-1]
        admin_key = (tmp_path / "ai-to-db.key").read_text()
        yield up, certs, f"127.0.0.1:{db_port}", f"127.0.0.1:{ai_port}", key, admin_key
    finally:
        up.kill()


def test_the_cli_over_mutual_tls_with_keys(
    secure_stack: tuple[Up, CertSet, str, str, str, str],
) -> None:
    _, certs, db, ai, key, admin_key = secure_stack
    where = ["--db", db, "--ai", ai]
    tls_env = {
        "NACHBAR_TLS_CA": str(certs.ca),
        "NACHBAR_TLS_CLIENT_CERT": str(certs.client.cert),
        "NACHBAR_TLS_CLIENT_KEY": str(certs.client.key),
    }
    # Health checks need TLS but no key.
    assert nachbar("ping", *where, env=tls_env).returncode == 0
    no_ca = nachbar("ping", "--service", "db", *where)
    assert no_ca.returncode == 1

    made = nachbar(
        "create-store",
        "notes",
        "--query-model",
        TEXT_MODEL,
        *where,
        env={**tls_env, "NACHBAR_API_KEY": admin_key},
    )
    assert made.returncode == 0, made.stderr
    flags = [
        *("--tls-ca", str(certs.ca), "--tls-client-cert", str(certs.client.cert)),
        *("--tls-client-key", str(certs.client.key)),
    ]
    listed = nachbar("stores", "--json", *where, *flags, "--api-key", key)
    assert [s["name"] for s in json.loads(listed.stdout)] == ["notes"], listed.stderr
    denied = nachbar("drop-store", "notes", *where, *flags, "--api-key", key)
    assert denied.returncode == 1
    assert "PERMISSION_DENIED" in denied.stderr and "DropStore needs admin" in denied.stderr
    assert key not in denied.stderr
    anonymous = nachbar("stores", *where, *flags)
    assert anonymous.returncode == 1 and "UNAUTHENTICATED" in anonymous.stderr
    stranger = nachbar(
        "stores",
        *where,
        *("--tls-ca", str(certs.ca), "--tls-client-cert", str(certs.stranger.cert)),
        *("--tls-client-key", str(certs.stranger.key), "--api-key", key),
    )
    assert stranger.returncode == 1
    assert "needs a client certificate signed by its --tls-client-ca" in stranger.stderr

    # Through nachbar-ai to nachbar-db, over TLS with nachbar-ai's own key.
    with AIClient(
        ai,
        timeout=30,
        api_key=key,
        tls_ca=certs.ca,
        tls_client_cert=certs.client.cert,
        tls_client_key=certs.client.key,
    ) as client:
        client.upsert("notes", ["the cat sleeps on the sofa", "stock markets fell"])
        top = client.get_sim_n("notes", "a kitten naps", k=1).matches[0]
        assert top.original == "the cat sleeps on the sofa"


def test_up_with_keys_needs_a_key_for_the_db(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    nachbar("keys", "create", "--keys-file", str(keys), "--role", "admin")
    result = nachbar("up", "--api-keys-file", str(keys), "--no-build")
    assert result.returncode == 2
    assert "--db-api-key-file" in result.stderr and "nachbar keys create" in result.stderr
