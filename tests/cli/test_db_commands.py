"""One-shot commands against a real nachbar-db: ping, stores, get, delete, drop-store, info."""

from __future__ import annotations

import json
import socket

import pytest

from nachbar.client import DBClient
from tests.cli.conftest import Cli


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_store(address: str, name: str) -> None:
    with DBClient(address, timeout=10) as db:
        db.create_store(name, 3, predicate_indexes=["lang"])
        db.upsert(
            name,
            [
                ("a", [1, 0, 0], {"lang": "en", "year": 2020, "tags": ["x", "y"]}),
                ("b", [0, 1, 0], {"lang": "de", "blob": b"\x00\x01"}),
            ],
        )


def test_ping_exits_0_when_serving_in_the_compose_health_check_form(
    run_cli: Cli, db_address: str
) -> None:
    # Exactly what compose runs: the address flag after the subcommand.
    result = run_cli("ping", "--service", "db", "--db", db_address)
    assert result.code == 0
    assert f"nachbar-db at {db_address}: SERVING" in result.out


def test_ping_exits_nonzero_when_nothing_listens(run_cli: Cli) -> None:
    address = f"127.0.0.1:{closed_port()}"
    result = run_cli("ping", "--service", "ai", "--ai", address)
    assert result.code == 1
    assert f"nachbar-ai at {address}: UNREACHABLE" in result.err
    assert result.out == ""


def test_ping_all_fails_when_one_service_is_down(run_cli: Cli, db_address: str) -> None:
    address = f"127.0.0.1:{closed_port()}"
    result = run_cli("--db", db_address, "--ai", address, "ping", "--json")
    assert result.code == 1
    report = json.loads(result.out)
    assert report["db"]["status"] == "SERVING"
    assert report["ai"]["status"] == "UNREACHABLE"


def test_addresses_come_from_the_environment(
    run_cli: Cli, db_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NACHBAR_DB_ADDRESS", db_address)
    assert run_cli("ping", "--service", "db").code == 0
    monkeypatch.setenv("NACHBAR_DB_ADDRESS", f"127.0.0.1:{closed_port()}")
    assert run_cli("ping", "--service", "db").code == 1


def test_stores_table_and_json(db_cli: Cli, db_address: str, store_name: str) -> None:
    make_store(db_address, store_name)
    table = db_cli("stores", "--service", "db")
    assert table.code == 0
    row = next(line for line in table.out.splitlines() if store_name in line)
    assert "│ 2 " in row and "│ 3 " in row and "cosine" in row and "lang" in row
    listed = json.loads(db_cli("stores", "--service", "db", "--json").out)
    mine = next(s for s in listed if s["name"] == store_name)
    assert (mine["count"], mine["dimension"], mine["metric"]) == (2, 3, "cosine")
    assert mine["predicate_indexes"] == ["lang"]


def test_get_prints_entries_and_fails_on_missing_ids(
    db_cli: Cli, db_address: str, store_name: str
) -> None:
    make_store(db_address, store_name)
    found = db_cli("get", store_name, "a", "b", "--service", "db", "--vectors")
    assert found.code == 0
    assert "lang=en  tags=[x, y]  year=2020" in found.out
    assert "blob=<2 bytes>" in found.out
    assert "[1.0000, 0.0000, 0.0000]" in found.out
    as_json = json.loads(db_cli("get", store_name, "b", "--service", "db", "--json").out)
    assert as_json["entries"][0]["metadata"] == {"lang": "de", "blob": {"base64": "AAE="}}
    missing = db_cli("get", store_name, "a", "nope", "--service", "db")
    assert missing.code == 1
    assert "not found in" in missing.err and "nope" in missing.err


def test_vectors_need_the_db_service(db_cli: Cli, store_name: str) -> None:
    result = db_cli("get", store_name, "a", "--vectors")
    assert result.code == 2
    assert "--service db" in result.err


def test_delete_reports_how_many(db_cli: Cli, db_address: str, store_name: str) -> None:
    make_store(db_address, store_name)
    result = db_cli("delete", store_name, "a", "ghost", "--service", "db")
    assert (result.code, result.out.strip()) == (0, f"deleted 1 of 2 from {store_name}")
    with DBClient(db_address) as db:
        assert db.get_store(store_name).count == 1


def test_drop_store_and_the_servers_error_message(
    db_cli: Cli, db_address: str, store_name: str
) -> None:
    make_store(db_address, store_name)
    assert db_cli("drop-store", store_name, "--service", "db").code == 0
    again = db_cli("drop-store", store_name, "--service", "db")
    assert again.code == 1
    assert again.err.startswith("error: NOT_FOUND: ")
    assert store_name in again.err
    assert db_cli("drop-store", store_name, "--service", "db", "--missing-ok").code == 0


def test_info_of_the_db(db_cli: Cli) -> None:
    result = db_cli("info", "--service", "db", "--json")
    assert result.code == 0
    info = json.loads(result.out)["db"]
    assert info["fsync_policy"] == "full"
    assert info["version"]


def test_unreachable_service_says_how_to_fix_it(run_cli: Cli) -> None:
    address = f"127.0.0.1:{closed_port()}"
    result = run_cli("--ai", address, "stores")
    assert result.code == 1
    assert f"cannot reach nachbar-ai at {address}" in result.err
    assert "nachbar up" in result.err


def test_usage_errors_exit_2(run_cli: Cli) -> None:
    assert run_cli("search", "--store", "x", "text", "--filter", "a = b").code == 2
    assert run_cli("search", "--store", "x").code == 2
