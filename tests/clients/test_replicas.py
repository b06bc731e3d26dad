"""Replicas: two nachbar-db processes on one Milvus and two nachbar-ai processes; the clients
spread calls round-robin and keep working when one replica of each stops."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nachbar.client import AIClient, DBClient
from nachbar.db.milvus_engine import MilvusEngine, MilvusSettings
from nachbar.v1.targets import channel_target
from tests.db.conftest import TEST_DATABASE, empty_milvus
from tests.servers import ServerProcess, spawn

CALLS = 40


@pytest.fixture
def milvus_uri(tmp_path: Path) -> Iterator[str]:
    """The Milvus the nachbar-db processes share: NACHBAR_TEST_MILVUS_URI's (its database
    nachbar_test, emptied first), or a milvus-lite server on a loopback port."""
    configured = os.environ.get("NACHBAR_TEST_MILVUS_URI")
    if configured:
        settings = MilvusSettings(uri=configured, db_name=TEST_DATABASE)
        engine = MilvusEngine.open(settings)
        empty_milvus(engine)
        engine.close()
        yield configured
        return
    from milvus_lite.adapter.grpc.server import start_server_in_thread

    server, lite, port = start_server_in_thread(str(tmp_path / "milvus"), host="127.0.0.1")
    yield f"http://127.0.0.1:{port}"
    server.stop(grace=0)
    lite.close()


def replicas_seen(db: DBClient) -> int:
    """How many processes answered: each reports its uptime, so now - uptime is its start time.
    The replicas start a second apart; answers within half a second are one process (the time
    an answer takes to arrive blurs it on a busy machine)."""
    starts = sorted(time.time() - db.info().uptime_seconds for _ in range(CALLS))
    return 1 + sum(later - earlier > 0.5 for earlier, later in itertools.pairwise(starts))


def test_clients_spread_calls_and_survive_a_stopped_replica(
    tmp_path: Path, milvus_uri: str
) -> None:
    servers: list[ServerProcess] = []
    milvus_db = ["--milvus-db", TEST_DATABASE] if "NACHBAR_TEST_MILVUS_URI" in os.environ else []
    try:
        for _ in range(2):
            servers.append(
                spawn(
                    "nachbar-db",
                    ["--engine", "milvus", "--milvus-uri", milvus_uri, *milvus_db],
                    tmp_path,
                )
            )
            time.sleep(1.0)  # distinct start times tell the replicas apart
        db1, db2 = servers
        dbs = f"{db1.address},{db2.address}"
        ai_args = ["--model-dir", str(tmp_path / "models"), "--models", ""]
        for hosts in (dbs, f"{db2.address},{db1.address}"):
            servers.append(
                spawn(
                    "nachbar-ai",
                    ["--db-host", hosts, *ai_args],
                    tmp_path,
                    env={"HF_HUB_OFFLINE": "1"},
                )
            )
        ai1, ai2 = servers[2:]
        assert channel_target(dbs)[1] and channel_target("dns:///db:1369")[1]

        with (
            DBClient(dbs, timeout=20) as db,
            AIClient(f"{ai1.address},{ai2.address}", timeout=20) as ai,
        ):
            assert replicas_seen(db) == 2  # both db replicas answered
            bound = {"nachbar.ai.query_model": "m", "nachbar.ai.index_model": "m"}
            db.create_store("s", 3, store_metadata=bound)
            db.upsert("s", [("a", [1, 0, 0], {"n": 1})])
            # Every replica sees every write at once: the state is Milvus's.
            for _ in range(6):
                assert [m.id for m in db.get_sim_n("s", [1, 0, 0], k=1).matches] == ["a"]
            answered = {ai.info().db_address for _ in range(CALLS)}
            assert answered == {dbs, f"{db2.address},{db1.address}"}  # both ai replicas answered

            db1.kill()
            for n in range(CALLS):  # no call fails: gRPC retries them on the other replica
                db.upsert("s", [(f"k{n}", [1, n, 0], {})])
                assert db.get_store("s").count == n + 2
                assert [s.name for s in ai.list_stores()] == ["s"]  # ai -> db balances too
            assert replicas_seen(db) == 1

            ai1.kill()
            for _ in range(CALLS):
                assert [s.name for s in ai.list_stores()] == ["s"]
    finally:
        for server in servers:
            server.kill()
