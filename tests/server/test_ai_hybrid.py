"""nachbar-ai hybrid search over real gRPC: keyword index on CreateStore, query text as the
keyword query, explicit keywords, keyword-only, rerank after fusion, and precise errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nachbar.client import AIClient, FailedPrecondition, Hybrid, InvalidArgument
from nachbar.server.app import RunningServer
from tests.server.test_ai_service import CROSS_ENCODER, TEXT_MODEL, start_ai, start_db
from tests.servers import wait_serving

DOCS = [
    ("d0", "how to install packages with apt"),
    ("d1", "the dog and the cat"),
    ("d2", "configure the network interface"),
    ("d3", "zebra crossing near the river"),
]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AIClient]:
    db: RunningServer = start_db(tmp_path_factory.mktemp("ai-hybrid-db"))
    ai = start_ai(db.port, TEXT_MODEL, CROSS_ENCODER)
    wait_serving(f"127.0.0.1:{ai.port}")
    try:
        with AIClient(f"127.0.0.1:{ai.port}", timeout=60) as client:
            info = client.create_store(
                "docs", query_model=TEXT_MODEL, store_original=True, keyword_index=[]
            )
            assert info.db_store.keyword_fields == ("_nachbar_text",)
            client.upsert("docs", [(text, doc_id) for doc_id, text in DOCS])
            yield client
    finally:
        ai.stop(grace=1)
        db.stop(grace=1)


def test_query_text_feeds_both_sides(client: AIClient) -> None:
    found = client.get_sim_n("docs", "zebra", k=2, hybrid=Hybrid())
    assert found.matches[0].id == "d3"
    top = found.matches[0]
    assert top.vector_score is not None and top.keyword_score is not None
    assert top.hybrid_score == top.similarity
    assert found.plan.startswith("hybrid")


def test_keywords_override_and_keyword_only(client: AIClient) -> None:
    found = client.get_sim_n("docs", "pets", k=4, keywords="network", keyword_only=True)
    assert [m.id for m in found.matches] == ["d2"]
    assert found.matches[0].vector_score is None and found.matches[0].original is not None
    blended = client.get_sim_n("docs", "pets", k=2, keywords="apt", hybrid=Hybrid("blend"))
    assert "d0" in {m.id for m in blended.matches}


def test_rerank_after_fusion(client: AIClient) -> None:
    found = client.get_sim_n(
        "docs", "zebra river", k=2, hybrid=Hybrid(), rerank=CROSS_ENCODER, rerank_candidates=4
    )
    assert len(found.matches) == 2
    assert all(m.rerank_score is not None and m.hybrid_score is not None for m in found.matches)


def test_bad_hybrid_requests(client: AIClient) -> None:
    with pytest.raises(InvalidArgument, match="no words"):
        client.get_sim_n("docs", "?!", k=2, hybrid=Hybrid())
    with pytest.raises(InvalidArgument, match="needs store_original"):
        client.create_store("bare", query_model=TEXT_MODEL, store_original=False, keyword_index=[])
    client.create_store("plain", query_model=TEXT_MODEL, store_original=True)
    client.upsert("plain", [("some text", "a")])
    with pytest.raises(FailedPrecondition, match="no keyword index"):
        client.get_sim_n("plain", "text", k=1, hybrid=Hybrid())
    with pytest.raises(InvalidArgument, match="keyword-only search has no query vector"):
        client.get_sim_n("docs", "zebra", k=1, keyword_only=True, adapter="tuned")
    with pytest.raises(InvalidArgument, match="keyword-only search has no query vector"):
        client.get_sim_n("docs", "zebra", k=1, keyword_only=True, rescorer="tuned")
    assert client.get_sim_n("docs", "zebra", k=1).matches  # still serving
