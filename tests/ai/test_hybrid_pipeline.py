"""nachbar-ai's hybrid search: the query text feeds the keyword side by default, explicit
keywords override it, image queries need keywords, and a rerank reads the fused candidates."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image

from nachbar.ai.bindings import ORIGINAL_TEXT
from nachbar.ai.errors import InvalidInputError
from nachbar.ai.models import ModelManager
from nachbar.ai.pipeline import AIPipeline, HybridSpec, RerankSpec, SearchRequest, UpsertItem
from nachbar.db.engine import Database
from nachbar.db.filters import Filter
from nachbar.db.types import StoreInfo
from tests.ai.engine_store import EngineOptions, EngineStore

TEXT = "all-minilm-l6-v2"
IMAGE = "imagenet-conse-minilm-l6"
CROSS_ENCODER = "stsb-minilm-l6-cross-encoder"
DOCS = [
    "a cat on the red car",
    "the dog and the cat",
    "a big blue house",
    "music at night",
    "the quick brown fox jumps over the lazy dog",
    "zebra crossing near the river",
]
Pipeline = AIPipeline[Filter, EngineOptions, StoreInfo]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EngineStore]:
    with Database.open(tmp_path / "db", fsync="off", checkpoint_seconds=0) as database:
        yield EngineStore(database)


@pytest.fixture
def pipeline(tiny_manager: ModelManager, store: EngineStore) -> Pipeline:
    pipeline: Pipeline = AIPipeline(tiny_manager, store)
    pipeline.create_store(
        "docs",
        query_model=TEXT,
        store_original=True,
        options=EngineOptions(keyword_fields=(ORIGINAL_TEXT,)),
    )
    pipeline.upsert("docs", [UpsertItem(text, f"d{i}") for i, text in enumerate(DOCS)])
    return pipeline


def test_query_text_is_the_default_keyword_query(pipeline: Pipeline, store: EngineStore) -> None:
    outcome = pipeline.search("docs", SearchRequest("zebra", 3, hybrid=HybridSpec()))
    assert store.last_keywords is not None and store.last_keywords.text == "zebra"
    assert len(outcome.hits) == 3
    zebra = next(h for h in outcome.hits if h.id == "d5")
    assert zebra.keyword_score is not None and zebra.vector_score is not None
    assert zebra.hybrid_score == zebra.similarity
    assert outcome.hits[0].id == "d5"  # found by both sides
    others = [h for h in outcome.hits if h.id != "d5"]
    assert all(h.keyword_score is None for h in others)
    long_query = "zebra " + "é" * 5000  # over the keyword limit: its first 4096 bytes are used
    pipeline.search(
        "docs", SearchRequest(long_query, 1, hybrid=HybridSpec(), truncation="truncate")
    )
    assert store.last_keywords is not None
    assert len(store.last_keywords.text.encode()) == 4096
    assert store.last_keywords.text.startswith("zebra ")
    plain = pipeline.search("docs", SearchRequest("zebra", 3))
    assert all(h.hybrid_score is None for h in plain.hits)


def test_explicit_keywords_override_and_keyword_only(
    pipeline: Pipeline, store: EngineStore
) -> None:
    spec = HybridSpec(keywords="music", keyword_only=True)
    outcome = pipeline.search("docs", SearchRequest("something else", 5, hybrid=spec))
    assert store.last_keywords is not None and store.last_keywords.text == "music"
    assert [h.id for h in outcome.hits] == ["d3"]
    assert outcome.hits[0].vector_score is None and outcome.plan == "keyword"
    assert outcome.hits[0].original == "music at night"


def test_image_queries_need_keywords(tiny_manager: ModelManager, store: EngineStore) -> None:
    pipeline: Pipeline = AIPipeline(tiny_manager, store)
    pipeline.create_store(
        "img",
        query_model=IMAGE,
        index_model=IMAGE,
        store_original=False,
        options=EngineOptions(keyword_fields=("caption",)),
    )
    buffer = BytesIO()
    Image.new("RGB", (40, 30), (200, 20, 90)).save(buffer, format="PNG")
    image = buffer.getvalue()
    pipeline.upsert("img", [UpsertItem(image, "a", {"caption": "a red car"})])
    with pytest.raises(InvalidInputError, match="image query needs keywords"):
        pipeline.search("img", SearchRequest(image, 1, hybrid=HybridSpec()))
    found = pipeline.search("img", SearchRequest(image, 1, hybrid=HybridSpec(keywords="car")))
    assert [h.id for h in found.hits] == ["a"] and found.hits[0].keyword_score is not None


def test_rerank_reads_the_fused_candidates(pipeline: Pipeline, store: EngineStore) -> None:
    outcome = pipeline.search(
        "docs",
        SearchRequest(
            "zebra", 2, hybrid=HybridSpec(fusion="blend"), rerank=RerankSpec(CROSS_ENCODER, 4)
        ),
    )
    assert store.last_k == 4  # the rerank's candidates come from the hybrid search
    assert len(outcome.hits) == 2
    assert all(h.rerank_score is not None and h.hybrid_score is not None for h in outcome.hits)
