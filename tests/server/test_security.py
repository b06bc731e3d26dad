"""TLS and API keys on real servers: certificates made at run time, every RPC of both services
called with every role inside and outside its store scope."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from nachbar.client import (
    AsyncDBClient,
    DBClient,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from nachbar.server.ai_main import start_ai_server
from nachbar.server.app import RunningServer
from nachbar.server.auth import Role, create_key, required_role, revoke_key
from nachbar.server.config import parse_ai_config, parse_db_config
from nachbar.server.db_main import start_db_server
from nachbar.v1 import ai_pb2, db_pb2
from tests.certs import CertSet, make_cert_set
from tests.servers import wait_serving

AUTH_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
IN_SCOPE, OUT_OF_SCOPE = "team-a", "other"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertSet:
    return make_cert_set(tmp_path_factory.mktemp("certs"))


# -- TLS --------------------------------------------------------------------------------------


def _tls_db(tmp: Path, certs: CertSet, *, mutual: bool) -> RunningServer:
    argv = ["--port", "0", "--data-dir", str(tmp / "data")]
    argv += ["--tls-cert", str(certs.server.cert), "--tls-key", str(certs.server.key)]
    if mutual:
        argv += ["--tls-client-ca", str(certs.ca)]
    return start_db_server(parse_db_config(argv))


def test_tls_needs_the_ca_and_says_so(tmp_path: Path, certs: CertSet) -> None:
    server = _tls_db(tmp_path, certs, mutual=False)
    address = f"127.0.0.1:{server.port}"
    try:
        with DBClient(address, timeout=5, tls_ca=certs.ca) as db:
            db.create_store("s", dimension=2)
            assert [s.name for s in db.list_stores()] == ["s"]
        with DBClient(address, timeout=5, tls=True) as db, pytest.raises(Unavailable) as no_ca:
            db.list_stores()
        assert "not signed by a CA this client trusts" in no_ca.value.message
        assert "--tls-ca" in no_ca.value.message
        with (
            DBClient(address, timeout=5, tls_ca=certs.other_ca) as db,
            pytest.raises(Unavailable, match="not signed by a CA"),
        ):
            db.list_stores()
        with DBClient(address, timeout=5) as db, pytest.raises(Unavailable) as plain:
            db.list_stores()
        assert "if it serves TLS, pass the CA" in plain.value.message
    finally:
        server.stop(grace=0)


def test_the_async_client_speaks_tls_with_a_key(tmp_path: Path, certs: CertSet) -> None:
    keys = tmp_path / "keys.json"
    _, secret = create_key(keys, Role.ADMIN)
    server = start_db_server(
        parse_db_config(
            [
                *("--port", "0", "--data-dir", str(tmp_path / "data")),
                *("--tls-cert", str(certs.server.cert), "--tls-key", str(certs.server.key)),
                *("--api-keys-file", str(keys)),
            ]
        )
    )

    async def calls() -> list[str]:
        address = f"127.0.0.1:{server.port}"
        async with AsyncDBClient(address, timeout=5, tls_ca=certs.ca, api_key=secret) as db:
            await db.create_store("s", dimension=2)
            names = [s.name for s in await db.list_stores()]
        async with AsyncDBClient(address, timeout=5, tls_ca=certs.ca, api_key="") as db:
            with pytest.raises(Unauthenticated):
                await db.list_stores()
        return names

    try:
        assert asyncio.run(calls()) == ["s"]
    finally:
        server.stop(grace=0)


def test_a_tls_client_against_a_plaintext_server(tmp_path: Path, certs: CertSet) -> None:
    server = start_db_server(parse_db_config(["--port", "0", "--data-dir", str(tmp_path)]))
    try:
        with (
            DBClient(f"127.0.0.1:{server.port}", timeout=5, tls_ca=certs.ca) as db,
            pytest.raises(Unavailable, match="does not speak TLS"),
        ):
            db.list_stores()
    finally:
        server.stop(grace=0)


def test_mutual_tls_refuses_a_wrong_client_certificate(tmp_path: Path, certs: CertSet) -> None:
    server = _tls_db(tmp_path, certs, mutual=True)
    address = f"127.0.0.1:{server.port}"
    try:
        with DBClient(
            address,
            timeout=5,
            tls_ca=certs.ca,
            tls_client_cert=certs.client.cert,
            tls_client_key=certs.client.key,
        ) as db:
            db.ping()
        for cert, key in ((certs.stranger.cert, certs.stranger.key), (None, None)):
            with (
                DBClient(
                    address, timeout=5, tls_ca=certs.ca, tls_client_cert=cert, tls_client_key=key
                ) as db,
                pytest.raises(Unavailable, match="needs a client certificate signed by"),
            ):
                db.ping()
    finally:
        server.stop(grace=0)


def test_bad_tls_files_stop_the_server_with_the_file_named(tmp_path: Path, certs: CertSet) -> None:
    base = ["--port", "0", "--data-dir", str(tmp_path)]
    with pytest.raises(SystemExit, match="does not belong to --tls-cert"):
        start_db_server(
            parse_db_config(
                [*base, "--tls-cert", str(certs.server.cert), "--tls-key", str(certs.client.key)]
            )
        )
    missing = tmp_path / "missing.pem"
    with pytest.raises(SystemExit, match=f"--tls-cert {missing}: cannot read"):
        start_db_server(
            parse_db_config([*base, "--tls-cert", str(missing), "--tls-key", str(missing)])
        )


def test_keys_beyond_loopback_need_tls_or_insecure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys.json"
    create_key(keys, Role.ADMIN)
    argv = ["--host", "0.0.0.0", "--data-dir", str(tmp_path), "--api-keys-file", str(keys)]
    with pytest.raises(SystemExit):
        parse_db_config(argv)
    assert "API keys would travel in clear text" in capsys.readouterr().err
    assert parse_db_config([*argv, "--insecure"]).exposure.insecure
    assert parse_db_config(argv[2:]).exposure.api_keys_file == keys  # loopback: fine


# -- API keys through both services -------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    path: Path
    by_label: dict[str, tuple[Role, tuple[str, ...], str]]  # label -> (role, scopes, key)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    by_label: dict[str, tuple[Role, tuple[str, ...], str]] = {}
    for role in Role:
        _, secret = create_key(path, role, ["team-*"])
        by_label[f"{role.label}@team-*"] = (role, ("team-*",), secret)
    _, secret = create_key(path, Role.READ)
    by_label["read@*"] = (Role.READ, (), secret)
    return Keys(path, by_label)


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory, keys: Keys
) -> Iterator[tuple[RunningServer, RunningServer, str]]:
    """db and ai with API keys; ai reaches db with its own unscoped admin key."""
    tmp = tmp_path_factory.mktemp("secured")
    _, service_key = create_key(keys.path, Role.ADMIN)
    (tmp / "service.key").write_text(service_key + "\n")
    db = start_db_server(
        parse_db_config(
            ["--port", "0", "--data-dir", str(tmp / "data"), "--api-keys-file", str(keys.path)]
        )
    )
    ai = start_ai_server(
        parse_ai_config(
            [
                "--port",
                "0",
                "--db-port",
                str(db.port),
                "--model-dir",
                str(tmp / "models"),
                "--models",
                "",
                "--api-keys-file",
                str(keys.path),
                "--db-api-key-file",
                str(tmp / "service.key"),
            ]
        )
    )
    wait_serving(f"127.0.0.1:{ai.port}")
    yield db, ai, service_key
    ai.stop(grace=0)
    db.stop(grace=0)


def _call(
    channel: grpc.Channel, service: Any, method: Any, store: str | None, key: str | None
) -> grpc.StatusCode:
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    request = request_class()
    if store is not None:
        request.store = store  # type: ignore[attr-defined]
    call = channel.unary_unary(
        f"/{service.full_name}/{method.name}",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    try:
        call(request, timeout=10, metadata=metadata)
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        return code
    return grpc.StatusCode.OK


@pytest.mark.parametrize("name", ["db", "ai"])
def test_every_rpc_with_every_role_and_scope(
    secured: tuple[RunningServer, RunningServer, str], keys: Keys, name: str
) -> None:
    server = secured[0] if name == "db" else secured[1]
    module = db_pb2 if name == "db" else ai_pb2
    service = next(iter(module.DESCRIPTOR.services_by_name.values()))
    mismatches: list[tuple[str, str | None, str | None, str]] = []
    calls = 0
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        for method in service.methods:
            takes_store = "store" in method.input_type.fields_by_name
            stores = (IN_SCOPE, OUT_OF_SCOPE) if takes_store else (None,)
            for label, (role, scopes, secret) in keys.by_label.items():
                for store in stores:
                    code = _call(channel, service, method, store, secret)
                    calls += 1
                    allowed = role >= required_role(method.name) and (
                        store is None or not scopes or store.startswith("team-")
                    )
                    refused = code == grpc.StatusCode.PERMISSION_DENIED
                    if allowed == refused or code == grpc.StatusCode.UNAUTHENTICATED:
                        mismatches.append((method.name, label, store, code.name))
            for key in (None, "nbk_not-a-key"):
                code = _call(channel, service, method, IN_SCOPE if takes_store else None, key)
                if code != grpc.StatusCode.UNAUTHENTICATED:
                    mismatches.append((method.name, key, None, code.name))
    assert calls >= 90
    assert mismatches == []


def test_allowed_calls_do_their_work_and_lists_are_scoped(
    secured: tuple[RunningServer, RunningServer, str], keys: Keys
) -> None:
    db_address = f"127.0.0.1:{secured[0].port}"
    admin, writer, reader = (keys.by_label[f"{r}@team-*"][2] for r in ("admin", "write", "read"))
    everything = keys.by_label["read@*"][2]
    with DBClient(db_address, timeout=10, api_key=secured[2]) as service:
        service.create_store("outside", dimension=2)
    with DBClient(db_address, timeout=10, api_key=admin) as db:
        db.create_store("team-x", dimension=2)
        with pytest.raises(PermissionDenied, match="not 'outside'"):
            db.drop_store("outside")
    with DBClient(db_address, timeout=10, api_key=writer) as db:
        assert db.upsert("team-x", [("a", [1.0, 0.0])]).inserted == 1
        with pytest.raises(PermissionDenied, match="has role write; CreateStore needs admin"):
            db.create_store("team-y", dimension=2)
    with DBClient(db_address, timeout=10, api_key=reader) as db:
        assert db.get_sim_n("team-x", [1.0, 0.0], k=1).matches[0].id == "a"
        assert [s.name for s in db.list_stores()] == ["team-x"]
        with pytest.raises(PermissionDenied, match="has role read; Upsert needs write"):
            db.upsert("team-x", [("b", [0.0, 1.0])])
    with DBClient(db_address, timeout=10, api_key=everything) as db:
        assert [s.name for s in db.list_stores()] == ["outside", "team-x"]


def test_the_key_is_read_from_the_environment(
    secured: tuple[RunningServer, RunningServer, str],
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    address = f"127.0.0.1:{secured[0].port}"
    monkeypatch.setenv("NACHBAR_API_KEY", keys.by_label["read@*"][2])
    with DBClient(address, timeout=10) as db:
        db.ping()
    with DBClient(address, timeout=10, api_key="") as db, pytest.raises(Unauthenticated):
        db.ping()


def test_health_is_open_and_reflection_needs_a_key(
    secured: tuple[RunningServer, RunningServer, str], keys: Keys
) -> None:
    for server in secured[:2]:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            ask = [reflection_pb2.ServerReflectionRequest(list_services="")]
            with pytest.raises(grpc.RpcError) as refused:
                list(reflection.ServerReflectionInfo(iter(ask), timeout=5))
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            key = keys.by_label["read@team-*"][2]
            answers = list(
                reflection.ServerReflectionInfo(
                    iter(ask), timeout=5, metadata=(("authorization", f"Bearer {key}"),)
                )
            )
            names = {s.name for s in answers[0].list_services_response.service}
            assert "grpc.health.v1.Health" in names


def test_scopes_hold_on_both_sides(tmp_path: Path) -> None:
    """nachbar-ai checks the caller's key; nachbar-db checks nachbar-ai's own key."""
    path = tmp_path / "keys.json"
    _, caller = create_key(path, Role.ADMIN)
    _, service_key = create_key(path, Role.ADMIN, ["team-*"])
    (tmp_path / "service.key").write_text(service_key)
    db = start_db_server(
        parse_db_config(
            ["--port", "0", "--data-dir", str(tmp_path / "d"), "--api-keys-file", str(path)]
        )
    )
    ai = start_ai_server(
        parse_ai_config(
            [
                *("--port", "0", "--db-port", str(db.port), "--models", ""),
                *("--model-dir", str(tmp_path / "m"), "--api-keys-file", str(path)),
                *("--db-api-key-file", str(tmp_path / "service.key")),
            ]
        )
    )
    try:
        wait_serving(f"127.0.0.1:{ai.port}")
        from nachbar.client import AIClient

        with AIClient(f"127.0.0.1:{ai.port}", timeout=10, api_key=caller) as client:
            with pytest.raises(NotFound):
                client.get_store("team-missing")
            with pytest.raises(PermissionDenied, match="may only reach stores matching team-"):
                client.get_store("other")
    finally:
        ai.stop(grace=0)
        db.stop(grace=0)


def test_a_revoked_key_stops_working_without_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    record, secret = create_key(path, Role.READ)
    db = start_db_server(
        parse_db_config(
            ["--port", "0", "--data-dir", str(tmp_path / "d"), "--api-keys-file", str(path)]
        )
    )
    try:
        with DBClient(f"127.0.0.1:{db.port}", timeout=5, api_key=secret) as client:
            client.ping()
            revoke_key(path, record.id)
            time.sleep(0.3)  # the server looks at the file every quarter second
            with pytest.raises(Unauthenticated, match="unknown or revoked"):
                client.ping()
    finally:
        db.stop(grace=0)
