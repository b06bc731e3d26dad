"""Keyword index and hybrid search through DBService over real gRPC, on both engines."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from nachbar.client import (
    DBClient,
    FailedPrecondition,
    Field,
    Hybrid,
    InvalidArgument,
    NotFound,
    Unimplemented,
)
from nachbar.server.app import RunningServer
from nachbar.server.config import parse_db_config
from nachbar.server.db_main import start_db_server
from nachbar.v1 import db_pb2, db_pb2_grpc

DOCS = [
    ("a", [1, 0, 0], {"text": "install packages with apt-get", "lang": "en"}),
    ("b", [0, 1, 0], {"text": "apt sources list configuration", "lang": "en"}),
    ("c", [0, 0, 1], {"text": "Pakete mit apt installieren", "lang": "de"}),
    ("d", [0.7, 0.7, 0], {"caption": "a photo of a cat"}),
]


def test_hybrid_and_keyword_only_search(db: DBClient) -> None:
    info = db.create_store("docs", 3, keyword_fields=["text", "caption"])
    assert info.keyword_fields == ("text", "caption")
    db.upsert("docs", DOCS)
    hybrid = db.get_sim_n("docs", [0, 0, 1], k=3, keywords="apt", hybrid=Hybrid("rrf"))
    assert len(hybrid.matches) == 3 and hybrid.plan.startswith("hybrid")
    top = hybrid.matches[0]
    assert top.id == "c"  # first by vector, and it has the word
    assert top.vector_score == pytest.approx(1.0, abs=1e-5)
    assert top.keyword_score is not None and top.keyword_score > 0
    by_keyword = [m.id for m in db.get_sim_n("docs", None, k=10, keywords="apt").matches]
    rank = by_keyword.index("c") + 1
    assert top.hybrid_score == pytest.approx(1 / 61 + 1 / (60 + rank), rel=1e-5)
    assert top.hybrid_score == top.similarity
    only = db.get_sim_n("docs", None, k=10, keywords="cat photo")
    assert [m.id for m in only.matches] == ["d"] and only.plan == "keyword"
    assert only.matches[0].vector_score is None
    assert only.matches[0].keyword_score == only.matches[0].similarity
    filtered = db.get_sim_n("docs", None, k=10, keywords="apt", filter=Field("lang") == "de")
    assert [m.id for m in filtered.matches] == ["c"]
    blend = db.get_sim_n(
        "docs", [1, 0, 0], k=2, keywords="sources", hybrid=Hybrid("blend", vector_weight=0.0)
    )
    assert blend.matches[0].id == "b"  # weight 0: keywords alone decide
    plain = db.get_sim_n("docs", [1, 0, 0], k=1)
    assert plain.matches[0].hybrid_score is None and plain.matches[0].keyword_score is None


def test_keyword_index_created_later_and_errors(db: DBClient) -> None:
    db.create_store("docs", 3)
    db.upsert("docs", DOCS)
    with pytest.raises(FailedPrecondition, match="CreateKeywordIndex"):
        db.get_sim_n("docs", [1, 0, 0], k=2, keywords="apt")
    created = db.create_keyword_index("docs", ["text"])
    assert (created.created, created.indexed) == (True, 3)
    assert db.get_store("docs").keyword_fields == ("text",)
    assert {m.id for m in db.get_sim_n("docs", None, k=5, keywords="apt").matches} == {
        "a",
        "b",
        "c",
    }
    with pytest.raises(InvalidArgument, match="empty or only whitespace"):
        db.get_sim_n("docs", [1, 0, 0], k=2, keywords="  \n ")
    with pytest.raises(InvalidArgument, match="no words"):
        db.get_sim_n("docs", [1, 0, 0], k=2, keywords='"*:()')
    with pytest.raises(InvalidArgument, match="a query vector, keywords, or both"):
        db.get_sim_n("docs", None, k=2)
    with pytest.raises(InvalidArgument, match="vector_weight"):
        db.get_sim_n(
            "docs", [1, 0, 0], k=2, keywords="apt", hybrid=Hybrid("blend", vector_weight=2.0)
        )
    # FTS5 syntax in user text is only words
    for text in ['apt" OR', "NEAR(apt", "apt*", "text:apt", "-apt"]:
        assert db.get_sim_n("docs", None, k=5, keywords=text).matches
    assert db.drop_keyword_index("docs") is True
    with pytest.raises(NotFound, match="no keyword index"):
        db.drop_keyword_index("docs")
    assert db.drop_keyword_index("docs", missing_ok=True) is False


def test_unknown_fusion_enum_is_invalid(db_server: RunningServer, db: DBClient) -> None:
    db.create_store("docs", 3, keyword_fields=["text"])
    db.upsert("docs", DOCS)
    with grpc.insecure_channel(f"127.0.0.1:{db_server.port}") as channel:
        stub = db_pb2_grpc.DBServiceStub(channel)
        request = db_pb2.GetSimNRequest(store="docs", query=[1, 0, 0], k=2, keywords="apt")
        request.hybrid.fusion = 7  # type: ignore[assignment]
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetSimN(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown hybrid fusion" in str(caught.value.details())
        request.hybrid.fusion = db_pb2.HYBRID_FUSION_BLEND
        assert len(stub.GetSimN(request, timeout=10).matches) == 2  # still serving


def test_milvus_engine_says_hybrid_is_not_available(tmp_path: Path) -> None:
    config = parse_db_config(
        ["--port", "0", "--engine", "milvus", "--milvus-uri", str(tmp_path / "lite.db")]
    )
    running = start_db_server(config)
    try:
        with DBClient(f"127.0.0.1:{running.port}", timeout=30) as db:
            with pytest.raises(Unimplemented, match="embedded engine"):
                db.create_store("docs", 3, keyword_fields=["text"])
            db.create_store("docs", 3)
            db.upsert("docs", DOCS[:1])
            with pytest.raises(Unimplemented, match="embedded engine"):
                db.create_keyword_index("docs", ["text"])
            with pytest.raises(Unimplemented, match="embedded engine"):
                db.get_sim_n("docs", [1, 0, 0], k=1, keywords="apt")
            assert [m.id for m in db.get_sim_n("docs", [1, 0, 0], k=1).matches] == ["a"]
    finally:
        running.stop(grace=1)
