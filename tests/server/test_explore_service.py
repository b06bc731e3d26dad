"""MMR and recommend by examples over real gRPC: nachbar-db on both engines, nachbar-ai with the
offline models, the Python clients (sync and asyncio), statuses and messages of bad requests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from nachbar.client import (
    AIClient,
    AsyncAIClient,
    AsyncDBClient,
    DBClient,
    Field,
    InvalidArgument,
    NotFound,
)
from nachbar.server.config import parse_db_config
from nachbar.server.db_main import start_db_server
from nachbar.v1 import ai_pb2, ai_pb2_grpc, db_pb2, db_pb2_grpc
from tests.server.test_ai_service import (
    CROSS_ENCODER,
    IMAGE_MODEL,
    TEXT_MODEL,
    foolbox_photos,
    start_ai,
    start_db,
)
from tests.servers import wait_serving

DIM = 8


@pytest.fixture(params=["embedded", "milvus"])
def db_address(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "embedded":
        args = ["--data-dir", str(tmp_path / "data")]
    else:
        args = ["--engine", "milvus", "--milvus-uri", str(tmp_path / "lite.db")]
    running = start_db_server(parse_db_config(["--port", "0", *args]))
    yield f"127.0.0.1:{running.port}"
    running.stop(grace=1)


def fill(db: DBClient) -> np.ndarray:
    vectors = np.random.default_rng(5).standard_normal((60, DIM)).astype(np.float32)
    db.create_store("s", DIM)
    db.upsert("s", [(f"e{i:02d}", v, {"even": i % 2 == 0}) for i, v in enumerate(vectors)])
    return vectors


def test_db_service_mmr_and_recommend(db_address: str) -> None:
    with DBClient(db_address, timeout=30) as db:
        vectors = fill(db)
        query = vectors[0] + 0.1
        plain = db.get_sim_n("s", query, 5, mode="exact")
        same = db.get_sim_n("s", query, 5, mode="exact", mmr=1.0)
        assert [m.id for m in same.matches] == [m.id for m in plain.matches]
        diverse = db.get_sim_n("s", query, 5, mode="exact", mmr=0.0, include_vectors=True)
        assert diverse.matches[0].id == plain.matches[0].id
        assert len({m.id for m in diverse.matches}) == 5
        assert all(m.vector is not None for m in diverse.matches)

        # Recommend without a query: the example never comes back; the filter holds.
        liked = db.get_sim_n("s", None, 4, positive=["e00"], filter=Field("even") == True)  # noqa: E712
        assert len(liked.matches) == 4 and "e00" not in [m.id for m in liked.matches]
        assert all(m.metadata["even"] is True for m in liked.matches)
        # Average of one positive is that entry's vector: the nearest others of e00.
        near = db.get_sim_n("s", vectors[0], 5, filter=Field("even") == True, mode="exact")  # noqa: E712
        assert [m.id for m in liked.matches] == [m.id for m in near.matches][1:5]
        best = db.get_sim_n(
            "s", None, 4, positive=["e00", "e01"], negative=["e02"], strategy="best_score"
        )
        assert len(best.matches) == 4
        assert not {"e00", "e01", "e02"} & {m.id for m in best.matches}

        with pytest.raises(NotFound, match="no entries 'zz' given as examples"):
            db.get_sim_n("s", None, 3, positive=["e00", "zz"])
        with pytest.raises(InvalidArgument, match="mmr lambda 1.5 is out of range"):
            db.get_sim_n("s", query, 3, mmr=1.5)
        with pytest.raises(InvalidArgument, match="give a query vector or positive example ids"):
            db.get_sim_n("s", None, 3, negative=["e01"])
        with pytest.raises(InvalidArgument, match="more than 64"):
            db.get_sim_n(
                "s",
                None,
                3,
                positive=[f"e{i:02d}" for i in range(60)],
                negative=[f"n{i}" for i in range(5)],
            )
        with grpc.insecure_channel(db_address) as channel:
            stub = db_pb2_grpc.DBServiceStub(channel)
            bad = db_pb2.GetSimNRequest(store="s", k=3, positive_ids=["e00"])
            bad.recommend_strategy = 7  # type: ignore[assignment]
            with pytest.raises(grpc.RpcError) as error:
                stub.GetSimN(bad, timeout=10)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "unknown recommend strategy 7" in (error.value.details() or "")
            for stray, message in (
                (
                    db_pb2.GetSimNRequest(store="s", k=3, query=list(query), mmr_candidates=9),
                    "mmr_candidates is set without mmr_lambda",
                ),
                (
                    db_pb2.GetSimNRequest(
                        store="s", k=3, query=list(query), recommend_candidates=9
                    ),
                    "need example ids",
                ),
            ):
                with pytest.raises(grpc.RpcError) as error:
                    stub.GetSimN(stray, timeout=10)
                assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert message in (error.value.details() or "")
            # Examples and MMR do not combine with keywords, on either engine.
            mixed = db_pb2.GetSimNRequest(
                store="s", k=3, query=list(query), mmr_lambda=0.5, keywords="guitar"
            )
            with pytest.raises(grpc.RpcError) as error:
                stub.GetSimN(mixed, timeout=10)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "do not combine with keyword" in (error.value.details() or "")
            # A plain request without a query still says what the query must be.
            with pytest.raises(grpc.RpcError) as error:
                stub.GetSimN(db_pb2.GetSimNRequest(store="s", k=3), timeout=10)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # Still serving.
        assert len(db.get_sim_n("s", query, 3).matches) == 3


def test_async_db_client(tmp_path: Path) -> None:
    running = start_db(tmp_path / "data")
    address = f"127.0.0.1:{running.port}"
    try:
        with DBClient(address, timeout=30) as db:
            fill(db)

        async def run() -> tuple[list[str], list[str]]:
            async with AsyncDBClient(address, timeout=30) as db:
                mmr = await db.get_sim_n("s", np.ones(DIM), 4, mmr=0.5, mmr_candidates=10)
                rec = await db.get_sim_n("s", None, 4, positive=["e03"], negative=["e04"])
                return [m.id for m in mmr.matches], [m.id for m in rec.matches]

        with DBClient(address, timeout=30) as db:
            want_mmr = [
                m.id for m in db.get_sim_n("s", np.ones(DIM), 4, mmr=0.5, mmr_candidates=10).matches
            ]
            want_rec = [
                m.id for m in db.get_sim_n("s", None, 4, positive=["e03"], negative=["e04"]).matches
            ]
        assert asyncio.run(run()) == (want_mmr, want_rec)
    finally:
        running.stop(grace=1)


@pytest.fixture(scope="module")
def ai_stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, str]]:
    db = start_db(tmp_path_factory.mktemp("explore-db"))
    ai = start_ai(db.port, TEXT_MODEL, IMAGE_MODEL, CROSS_ENCODER)
    wait_serving(f"127.0.0.1:{ai.port}")
    yield f"127.0.0.1:{db.port}", f"127.0.0.1:{ai.port}"
    ai.stop(grace=1)
    db.stop(grace=1)


DOCS = {
    "guitar1": "A man is playing a guitar.",
    "guitar2": "A man plays the guitar on stage.",
    "guitar3": "The guitarist plays a guitar solo.",
    "cook1": "A woman is slicing an onion.",
    "cook2": "A chef chops vegetables in the kitchen.",
    "dog1": "Two dogs run in the park.",
    "dog2": "A puppy chases a ball on the grass.",
    "sea": "A sailing ship on the sea.",
}


@pytest.fixture(scope="module")
def texts(ai_stack: tuple[str, str]) -> str:
    with AIClient(ai_stack[1], timeout=60) as ai:
        ai.create_store("docs", query_model=TEXT_MODEL, store_original=True)
        ai.upsert(
            "docs", [(text, key, {"topic": key.rstrip("0123456789")}) for key, text in DOCS.items()]
        )
    return "docs"


def test_ai_recommend_matches_nachbar_db(ai_stack: tuple[str, str], texts: str) -> None:
    with AIClient(ai_stack[1], timeout=60) as ai, DBClient(ai_stack[0], timeout=30) as db:
        for strategy in ("average_vector", "best_score"):
            hits = ai.get_sim_n(
                texts, None, 4, positive=["guitar1"], negative=["cook1"], strategy=strategy
            )
            direct = db.get_sim_n(
                texts, None, 4, positive=["guitar1"], negative=["cook1"], strategy=strategy
            )
            assert [m.id for m in hits.matches] == [m.id for m in direct.matches]
            assert hits.matches[0].id in {"guitar2", "guitar3"}
            assert not {"guitar1", "cook1"} & {m.id for m in hits.matches}
            assert hits.matches[0].original == DOCS[hits.matches[0].id]
        # With a query and a filter.
        hits = ai.get_sim_n(
            texts, "a dog playing", 3, positive=["dog1"], filter=Field("topic") == "dog"
        )
        assert [m.id for m in hits.matches] == ["dog2"]


def test_ai_mmr(ai_stack: tuple[str, str], texts: str) -> None:
    with AIClient(ai_stack[1], timeout=60) as ai:
        query = "a man playing guitar"
        plain = ai.get_sim_n(texts, query, 3, mode="exact")
        assert {m.id for m in plain.matches} == {"guitar1", "guitar2", "guitar3"}
        same = ai.get_sim_n(texts, query, 3, mode="exact", mmr=1.0)
        assert [m.id for m in same.matches] == [m.id for m in plain.matches]
        diverse = ai.get_sim_n(texts, query, 3, mode="exact", mmr=0.2)
        topics = {m.id.rstrip("0123456789") for m in diverse.matches}
        assert diverse.matches[0].id == plain.matches[0].id
        assert len(topics) == 3


def test_ai_combinations_and_bad_requests(ai_stack: tuple[str, str], texts: str) -> None:
    with AIClient(ai_stack[1], timeout=60) as ai:
        with pytest.raises(InvalidArgument, match="MMR does not combine with rerank"):
            ai.get_sim_n(texts, "guitar", 3, mmr=0.5, rerank=CROSS_ENCODER)
        with pytest.raises(InvalidArgument, match="rerank needs a text query"):
            ai.get_sim_n(texts, None, 3, positive=["guitar1"], rerank=CROSS_ENCODER)
        with pytest.raises(InvalidArgument, match="give a query or positive example ids"):
            ai.get_sim_n(texts, None, 3)
        with pytest.raises(NotFound, match="'missing'"):
            ai.get_sim_n(texts, None, 3, positive=["missing"])
        with pytest.raises(ValueError, match="need positive or negative ids"):
            ai.get_sim_n(texts, "guitar", 3, strategy="best_score")
        with grpc.insecure_channel(ai_stack[1]) as channel:
            stray = ai_pb2.GetSimNRequest(store=texts, k=3, recommend_candidates=5)
            stray.query.text = "guitar"
            with pytest.raises(grpc.RpcError) as error:
                ai_pb2_grpc.AIServiceStub(channel).GetSimN(stray, timeout=30)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "need example ids" in (error.value.details() or "")
        with pytest.raises(InvalidArgument, match="do not combine with keyword"):
            ai.get_sim_n(texts, "guitar", 3, positive=["guitar1"], keywords="guitar")
        with pytest.raises(InvalidArgument, match="mmr lambda -1.0 is out of range"):
            ai.get_sim_n(texts, "guitar", 3, mmr=-1.0)
        # Examples with a query and rerank: the reranker orders the recommended candidates.
        reranked = ai.get_sim_n(
            texts,
            "A man is playing guitar.",
            2,
            positive=["guitar3"],
            rerank=CROSS_ENCODER,
            rerank_candidates=5,
        )
        assert reranked.matches[0].id in {"guitar1", "guitar2"}
        assert all(m.rerank_score is not None for m in reranked.matches)
        assert "guitar3" not in {m.id for m in reranked.matches}
        assert len(ai.get_sim_n(texts, "guitar", 2).matches) == 2


def test_ai_recommend_on_an_image_store(ai_stack: tuple[str, str]) -> None:
    """Examples are stored image vectors: no text needed, and the asyncio client too."""
    with AIClient(ai_stack[1], timeout=60) as ai:
        ai.create_store("pics", query_model=TEXT_MODEL, index_model=IMAGE_MODEL)
        photos = foolbox_photos()
        ai.upsert(
            "pics", [(path, f"p{i}", {"class_index": cls}) for i, (path, cls) in enumerate(photos)]
        )

    async def run() -> list[str]:
        async with AsyncAIClient(ai_stack[1], timeout=60) as ai:
            found = await ai.get_sim_n("pics", None, 5, positive=["p0"], strategy="best_score")
            return [m.id for m in found.matches]

    with DBClient(ai_stack[0], timeout=30) as db:
        direct = db.get_sim_n("pics", None, 5, positive=["p0"], strategy="best_score")
    ids = asyncio.run(run())
    assert ids == [m.id for m in direct.matches]
    assert len(ids) == 5 and "p0" not in ids
