"""Fixtures for the storage engine tests.

`db` is every engine in turn (tests/db are the conformance suite): the embedded engine in a
temporary directory, and the Milvus engine on milvus-lite in this process, or on the Milvus at
NACHBAR_TEST_MILVUS_URI (a database `nachbar_test` there is created, and emptied before each
test). `database` is the embedded engine alone, for tests of its own internals.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from nachbar.db.engine import Database
from nachbar.db.interface import Engine
from nachbar.db.milvus_engine import COLLECTION_PREFIX, MilvusEngine, MilvusSettings

ENGINES = ("embedded", "milvus")
TEST_DATABASE = "nachbar_test"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture(scope="session")
def milvus_settings(tmp_path_factory: pytest.TempPathFactory) -> MilvusSettings:
    """milvus-lite in a session-wide file, or the cluster the environment names."""
    uri = os.environ.get("NACHBAR_TEST_MILVUS_URI", "")
    if not uri:
        return MilvusSettings(uri=str(tmp_path_factory.mktemp("milvus") / "lite.db"))
    token = os.environ.get("NACHBAR_TEST_MILVUS_TOKEN", "")
    admin = MilvusEngine.open(MilvusSettings(uri=uri, token=token))
    try:
        client = admin._connected()
        if TEST_DATABASE not in client.list_databases():
            client.create_database(TEST_DATABASE)
    finally:
        admin.close()
    return MilvusSettings(uri=uri, token=token, db_name=TEST_DATABASE)


def empty_milvus(engine: MilvusEngine) -> None:
    client = engine._connected()
    for collection in client.list_collections():
        if collection.startswith(COLLECTION_PREFIX):
            client.drop_collection(collection)


@pytest.fixture
def milvus_db(milvus_settings: MilvusSettings) -> Iterator[MilvusEngine]:
    engine = MilvusEngine.open(milvus_settings)
    empty_milvus(engine)
    yield engine
    engine.close()


@pytest.fixture
def database(data_dir: Path) -> Iterator[Database]:
    db = Database.open(data_dir, fsync="off", checkpoint_seconds=0)
    yield db
    db.close()


@pytest.fixture(params=ENGINES)
def db(request: pytest.FixtureRequest) -> Engine:
    fixture = "database" if request.param == "embedded" else "milvus_db"
    engine: Engine = request.getfixturevalue(fixture)
    return engine
