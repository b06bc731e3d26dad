"""The asyncio clients: the same methods as the blocking ones, and the same answers from real
servers."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator

import pytest

from nachbar.client import (
    AIClient,
    AlreadyExists,
    AsyncAIClient,
    AsyncDBClient,
    DBClient,
    Exact,
    Field,
    InvalidArgument,
    NotFound,
)
from nachbar.server.ai_main import start_ai_server
from nachbar.server.app import RunningServer
from nachbar.server.config import parse_ai_config, parse_db_config
from nachbar.server.db_main import start_db_server
from tests.models_fixture import built_model_dir
from tests.servers import wait_serving

TEXT_MODEL = "all-minilm-l6-v2"
CROSS_ENCODER = "stsb-minilm-l6-cross-encoder"


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(cls).items()
        if callable(member) and not name.startswith("_")
    }


@pytest.mark.parametrize(
    ("sync", "asynchronous"), [(AIClient, AsyncAIClient), (DBClient, AsyncDBClient)]
)
def test_every_blocking_method_has_an_async_twin_with_the_same_parameters(
    sync: type, asynchronous: type
) -> None:
    blocking, coroutines = public_methods(sync), public_methods(asynchronous)
    assert set(blocking) - {"close"} == set(coroutines) - {"close"}
    for name, signature in blocking.items():
        twin = getattr(asynchronous, name)
        assert inspect.iscoroutinefunction(twin), name
        assert list(signature.parameters.values()) == list(
            inspect.signature(twin).parameters.values()
        ), name
        assert signature.return_annotation == inspect.signature(twin).return_annotation, name


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    data = tmp_path_factory.mktemp("async-db")
    db = start_db_server(parse_db_config(["--port", "0", "--data-dir", str(data)]))
    ai: RunningServer | None = None
    try:
        model_dir = built_model_dir([TEXT_MODEL, CROSS_ENCODER])
        ai = start_ai_server(
            parse_ai_config(
                [
                    "--port",
                    "0",
                    "--db-port",
                    str(db.port),
                    "--model-dir",
                    str(model_dir),
                    "--models",
                    TEXT_MODEL,
                    "--hub-offline",
                ]
            )
        )
        ai_address = f"127.0.0.1:{ai.port}"
        wait_serving(ai_address, timeout=120)
        yield f"127.0.0.1:{db.port}", ai_address
    finally:
        if ai is not None:
            ai.stop(grace=1)
        db.stop(grace=1)


def test_async_db_client_answers_like_the_blocking_one(servers: tuple[str, str]) -> None:
    db_address, _ = servers

    async def scenario() -> None:
        async with AsyncDBClient(db_address, timeout=30) as db:
            created = await db.create_store("v", 3, index=Exact(), predicate_indexes=["lang"])
            assert created.created and created.dimension == 3 and created.store_id > 0
            again = await db.create_store("v", 3, if_not_exists=True)
            assert not again.created and again.store_id == created.store_id
            with pytest.raises(AlreadyExists):
                await db.create_store("v", 3)
            written = await db.upsert(
                "v",
                [("a", [1, 0, 0], {"lang": "en"}), ("b", [0, 1, 0], {"lang": "de"})],
                batch_size=1,
            )
            assert (written.inserted, written.updated) == (2, 0)
            assert [s.name for s in await db.list_stores()] == ["v"]
            assert (await db.get_store("v")).count == 2
            got = await db.get_key("v", ["a", "zz"], include_vectors=True)
            assert got.entries[0].vector == [1.0, 0.0, 0.0] and got.missing_ids == ["zz"]
            page = await db.get_by_predicate("v", Field("lang") == "de", limit=5)
            assert [e.id for e in page.entries] == ["b"] and page.next_page_token == ""
            hits = await asyncio.gather(*(db.get_sim_n("v", [1, 0.1, 0], k=1) for _ in range(8)))
            assert {h.matches[0].id for h in hits} == {"a"}
            assert await db.create_pred_index("v", ["n"]) == 1
            assert await db.drop_pred_index("v", ["n", "x"], missing_ok=True) == 1
            made = await db.create_keyword_index("v", ["lang"])
            assert (made.created, made.indexed) == (True, 2)
            found = await db.get_sim_n("v", None, k=5, keywords="de")
            assert [m.id for m in found.matches] == ["b"] and found.matches[0].keyword_score
            assert await db.drop_keyword_index("v") is True
            assert await db.delete_by_predicate("v", {"lang": {"eq": "de"}}) == 1
            assert await db.delete_keys("v", ["a", "zz"]) == 1
            assert (await db.info()).store_count == 1
            await db.ping()
            assert await db.drop_store("v") is True
            assert await db.drop_store("v", missing_ok=True) is False
            with pytest.raises(NotFound):
                await db.get_store("v")

    asyncio.run(scenario())
    with DBClient(db_address, timeout=30) as blocking:
        assert blocking.list_stores() == []


def test_async_ai_client_answers_like_the_blocking_one(servers: tuple[str, str]) -> None:
    _, ai_address = servers
    docs = ["A man plays the guitar.", "A chef chops onions.", "Two dogs run in a park."]
    with AIClient(ai_address, timeout=60) as blocking:
        blocking.create_store("sync-twin", query_model=TEXT_MODEL)
        blocking.upsert("sync-twin", [(d, f"d{i}", {"n": i}) for i, d in enumerate(docs)])
        expected = blocking.get_sim_n("sync-twin", "someone making music", k=3)
        expected_vectors = blocking.embed(TEXT_MODEL, docs)
        expected_rerank = blocking.rerank(CROSS_ENCODER, "music", docs)

    async def scenario() -> None:
        async with AsyncAIClient(ai_address, timeout=60) as ai:
            created = await ai.create_store("t", query_model=TEXT_MODEL)
            assert created.created and created.store_original  # the shared default
            assert not (
                await ai.create_store("t", query_model=TEXT_MODEL, if_not_exists=True)
            ).created
            written = await ai.upsert("t", [(d, f"d{i}", {"n": i}) for i, d in enumerate(docs)])
            assert (written.inserted, written.ids) == (3, ["d0", "d1", "d2"])
            found = await ai.get_sim_n("t", "someone making music", k=3)
            assert [(m.id, m.original) for m in found.matches] == [
                (m.id, m.original) for m in expected.matches
            ]
            for mine, theirs in zip(found.matches, expected.matches, strict=True):
                assert mine.similarity == pytest.approx(theirs.similarity, abs=1e-5)
            reranked = await ai.get_sim_n("t", "music", k=1, rerank=CROSS_ENCODER)
            assert reranked.matches[0].rerank_score is not None
            assert sorted(s.name for s in await ai.list_stores()) == ["sync-twin", "t"]
            assert (await ai.get_store("t")).db_store.count == 3
            got = await ai.get_key("t", ["d1", "zz"])
            assert (got.entries[0].original, got.missing_ids) == (docs[1], ["zz"])
            page = await ai.get_by_predicate("t", Field("n") >= 1)
            assert [e.id for e in page.entries] == ["d1", "d2"]
            vectors = await ai.embed(TEXT_MODEL, docs)
            assert len(vectors) == 3
            for mine_vector, their_vector in zip(vectors, expected_vectors, strict=True):
                assert mine_vector == pytest.approx(their_vector, abs=1e-5)
            ranked = await ai.rerank(CROSS_ENCODER, "music", docs)
            assert [r.index for r in ranked] == [r.index for r in expected_rerank]
            assert TEXT_MODEL in {m.name for m in await ai.list_models()}
            assert (await ai.info()).db_reachable
            await ai.ping()
            assert await ai.delete_by_predicate("t", {"n": {"eq": 0}}) == 1
            assert await ai.delete_keys("t", ["d1"]) == 1
            with pytest.raises(InvalidArgument, match="k must be at least 1"):
                await ai.get_sim_n("t", "x", k=0)
            assert await ai.drop_store("t") is True
            assert await ai.drop_store("t", missing_ok=True) is False

    asyncio.run(scenario())
    with AIClient(ai_address, timeout=60) as blocking:
        assert [s.name for s in blocking.list_stores()] == ["sync-twin"]
        blocking.drop_store("sync-twin")
