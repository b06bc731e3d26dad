"""Two nachbar-ai processes on one nachbar-db: cached bindings never outlive their store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from nachbar.client import AIClient, DBClient, InvalidArgument
from nachbar.server.app import RunningServer
from nachbar.server.config import parse_db_config
from nachbar.server.db_main import start_db_server
from tests.models_fixture import built_model_dir
from tests.servers import ServerProcess, spawn

TEXT_MODEL = "all-minilm-l6-v2"
TEXT_INT8 = "all-minilm-l6-v2-int8"


@pytest.fixture(scope="module")
def db_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    data = tmp_path_factory.mktemp("shared-db")
    running = start_db_server(parse_db_config(["--port", "0", "--data-dir", str(data)]))
    yield running
    running.stop(grace=1)


@pytest.fixture(scope="module")
def two_ais(
    db_server: RunningServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    model_dir = built_model_dir([TEXT_MODEL, TEXT_INT8])
    workdir = tmp_path_factory.mktemp("two-ais")
    args = [
        "--db-port",
        str(db_server.port),
        "--model-dir",
        str(model_dir),
        "--models",
        TEXT_MODEL,
        "--hub-offline",
    ]
    first = spawn("nachbar-ai", args, workdir / "one", timeout=120)
    try:
        second = spawn("nachbar-ai", args, workdir / "two", timeout=120)
    except BaseException:
        first.terminate()
        raise
    yield first, second
    for process in (first, second):
        assert process.terminate() == 0, process.log()


def test_a_store_recreated_through_one_ai_is_served_with_its_new_binding_by_the_other(
    db_server: RunningServer, two_ais: tuple[ServerProcess, ServerProcess], tmp_path: Path
) -> None:
    first, second = two_ais
    with (
        AIClient(first.address, timeout=60) as one,
        AIClient(second.address, timeout=60) as two,
        DBClient(f"127.0.0.1:{db_server.port}", timeout=60) as db,
    ):
        one.create_store("shared", query_model=TEXT_MODEL, store_original=True)
        one.upsert("shared", [("a cat sleeps on the sofa", "cat", {})])
        # The second process reads, and so caches, the binding: fp32 model, originals kept.
        assert two.get_sim_n("shared", "a kitten", k=1).matches[0].original == (
            "a cat sleeps on the sofa"
        )

        one.drop_store("shared")
        one.create_store("shared", query_model=TEXT_INT8, store_original=False)
        two.upsert("shared", [("a dog runs in the park", "dog", {"n": 1})])

        entry = db.get_key("shared", ["dog"], include_vectors=True).entries[0]
        assert entry.metadata == {"n": 1}  # no original: the new store keeps none
        expected = np.asarray(one.embed(TEXT_INT8, ["a dog runs in the park"])[0])
        assert entry.vector is not None
        vector = np.asarray(entry.vector)
        cosine = vector @ expected / (np.linalg.norm(vector) * np.linalg.norm(expected))
        assert cosine > 0.9999  # embedded by the new index model, not the cached one
        hit = two.get_sim_n("shared", "a puppy playing", k=1).matches[0]
        assert (hit.id, hit.original) == ("dog", None)
        assert two.get_store("shared").query_model == TEXT_INT8

        one.drop_store("shared")
        db.create_store("shared", dimension=384)  # the name now holds a store without models
        with pytest.raises(InvalidArgument, match="created on nachbar-db directly"):
            two.upsert("shared", ["a bird"])
        with pytest.raises(InvalidArgument, match="created on nachbar-db directly"):
            two.get_sim_n("shared", "a bird", k=1)
        assert db.get_store("shared").count == 0
        db.drop_store("shared")
