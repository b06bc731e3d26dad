"""nachbar-ai's pipeline without servers: tiny stand-in models, nachbar.db's engine in process."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nachbar.ai.errors import IncompatibleModelsError, InvalidInputError, ModelNotFoundError
from nachbar.ai.models import ModelManager
from nachbar.ai.pipeline import AIPipeline, RerankSpec, SearchRequest, UpsertItem
from nachbar.ai.vector_store import StoreNotFoundError
from nachbar.db.engine import Database
from nachbar.db.filters import Condition, Filter, Op
from nachbar.db.types import ExactConfig, Metric, StoreInfo, StoreSpec
from tests.ai.engine_store import EngineOptions, EngineStore

TEXT = "all-minilm-l6-v2"
TEXT_INT8 = "all-minilm-l6-v2-int8"
IMAGE = "imagenet-conse-minilm-l6"
OTHER_SPACE_IMAGE = "efficientnet-lite0"
CROSS_ENCODER = "stsb-minilm-l6-cross-encoder"
DOCS = [
    "a cat on the red car",
    "the dog and the cat",
    "a big blue house",
    "music at night",
    "the quick brown fox jumps over the lazy dog",
    "a small green tree by the river",
]

Pipeline = AIPipeline[Filter, EngineOptions, StoreInfo]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    with Database.open(tmp_path / "db", fsync="off", checkpoint_seconds=0) as database:
        yield database


@pytest.fixture
def store(db: Database) -> EngineStore:
    return EngineStore(db)


@pytest.fixture
def pipeline(tiny_manager: ModelManager, store: EngineStore) -> Pipeline:
    return AIPipeline(tiny_manager, store)


def texts_store(pipeline: Pipeline, name: str = "docs", *, originals: bool = True) -> str:
    pipeline.create_store(name, query_model=TEXT, store_original=originals, options=EngineOptions())
    pipeline.upsert(name, [UpsertItem(text, f"d{i}", {"n": i}) for i, text in enumerate(DOCS)])
    return name


def png(shade: int) -> bytes:
    buffer = BytesIO()
    Image.new("RGB", (40, 30), (shade, 255 - shade, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


# -- stores ---------------------------------------------------------------------------------------


def test_a_store_is_bound_to_its_models_and_sized_by_the_index_model(pipeline: Pipeline) -> None:
    store, created = pipeline.create_store(
        "photos",
        query_model=TEXT,
        index_model=IMAGE,
        store_original=False,
        options=EngineOptions(metric=Metric.INNER_PRODUCT),
    )
    assert created
    assert (store.binding.query_model, store.binding.index_model) == (TEXT, IMAGE)
    assert store.binding.space == "minilm-l6-v2" and not store.binding.store_original
    assert (
        store.info.dimension == 384 and store.info.metric is Metric.INNER_PRODUCT
    )  # passed through
    again, created = pipeline.create_store(
        "photos",
        query_model=TEXT,
        index_model=IMAGE,
        store_original=False,
        options=EngineOptions(metric=Metric.INNER_PRODUCT),
        if_not_exists=True,
    )
    assert not created and again.binding == store.binding
    with pytest.raises(InvalidInputError, match="other models"):
        pipeline.create_store(
            "photos",
            query_model=TEXT,
            store_original=False,
            options=EngineOptions(metric=Metric.INNER_PRODUCT),
            if_not_exists=True,
        )


def test_models_that_cannot_pair_are_refused_before_anything_is_created(
    pipeline: Pipeline, store: EngineStore
) -> None:
    with pytest.raises(IncompatibleModelsError, match=OTHER_SPACE_IMAGE):
        pipeline.create_store(
            "x",
            query_model=TEXT,
            index_model=OTHER_SPACE_IMAGE,
            store_original=True,
            options=EngineOptions(),
        )
    with pytest.raises(InvalidInputError, match="query_model .*cross-encoder"):
        pipeline.create_store(
            "x", query_model=CROSS_ENCODER, store_original=True, options=EngineOptions()
        )
    with pytest.raises(InvalidInputError, match="query_model is required"):
        pipeline.create_store("x", query_model="", store_original=True, options=EngineOptions())
    with pytest.raises(ModelNotFoundError):
        pipeline.create_store("x", query_model="nope", store_original=True, options=EngineOptions())
    assert store.db.list_stores() == []


def test_stores_made_on_the_vector_store_directly_are_not_served(
    pipeline: Pipeline, db: Database
) -> None:
    texts_store(pipeline)
    db.create_store(StoreSpec("raw", 384, index=ExactConfig()))
    assert [s.name for s in pipeline.list_stores()] == ["docs"]
    for call in (
        lambda: pipeline.get_store("raw"),
        lambda: pipeline.get("raw", ["a"]),
        lambda: pipeline.delete("raw", ["a"]),
        lambda: pipeline.search("raw", SearchRequest("cat", 1)),
        lambda: pipeline.upsert("raw", [UpsertItem("cat")]),
    ):
        with pytest.raises(InvalidInputError, match="created on nachbar-db directly"):
            call()


def test_drop_store_refuses_stores_it_does_not_own_even_with_missing_ok(
    pipeline: Pipeline, db: Database
) -> None:
    db.create_store(StoreSpec("raw", 3, index=ExactConfig()))
    for missing_ok in (False, True):
        with pytest.raises(InvalidInputError, match="created on nachbar-db directly"):
            pipeline.drop_store("raw", missing_ok=missing_ok)
    assert db.get_store("raw").name == "raw"  # still there
    assert pipeline.drop_store("gone", missing_ok=True) is False
    with pytest.raises(StoreNotFoundError):
        pipeline.drop_store("gone")
    texts_store(pipeline)
    assert pipeline.drop_store("docs", missing_ok=True) is True
    assert [s.name for s in db.list_stores()] == ["raw"]


# -- upsert and reads -------------------------------------------------------------------------


def test_upsert_embeds_with_the_index_model_and_keeps_originals(
    pipeline: Pipeline, tiny_manager: ModelManager, db: Database
) -> None:
    pipeline.create_store("t", query_model=TEXT, store_original=True, options=EngineOptions())
    outcome = pipeline.upsert("t", [UpsertItem("a cat", "c", {"k": 1}), UpsertItem("a dog")])
    assert (outcome.inserted, outcome.updated) == (2, 0)
    derived = outcome.ids[1]
    assert outcome.ids[0] == "c" and derived.startswith("t-")
    assert pipeline.upsert("t", [UpsertItem("a dog")]).ids == [derived]  # same content, same id
    stored, _ = db.get_keys("t", ["c"], include_vectors=True)
    assert stored[0].vector is not None
    np.testing.assert_allclose(stored[0].vector, tiny_manager.embed(TEXT, ["a cat"])[0], atol=1e-6)
    entries, missing = pipeline.get("t", ["c", derived, "zz"])
    assert [(e.id, e.metadata, e.original) for e in entries] == [
        ("c", {"k": 1}, "a cat"),
        (derived, {}, "a dog"),
    ]
    assert missing == ["zz"]
    # The original is a reserved metadata field in the vector store, never shown as metadata.
    assert set(stored[0].metadata) == {"k", "_nachbar_text"}


def test_a_store_without_originals_keeps_only_user_metadata(
    pipeline: Pipeline, db: Database
) -> None:
    pipeline.create_store(
        "img", query_model=TEXT, index_model=IMAGE, store_original=False, options=EngineOptions()
    )
    pipeline.upsert("img", [UpsertItem(png(10), "p", {"caption": "red"})])
    assert db.get_keys("img", ["p"])[0][0].metadata == {"caption": "red"}
    page = pipeline.get_by_filter("img", None)
    assert [(e.id, e.original) for e in page.entries] == [("p", None)]


def test_reserved_metadata_keys_are_refused_and_nothing_is_written(
    pipeline: Pipeline, db: Database
) -> None:
    pipeline.create_store("t", query_model=TEXT, store_original=True, options=EngineOptions())
    with pytest.raises(InvalidInputError, match=r"entries\[1\].*_nachbar_x.*reserved"):
        pipeline.upsert("t", [UpsertItem("fine", "a"), UpsertItem("bad", "b", {"_nachbar_x": 1})])
    assert db.get_store("t").count == 0


def test_rules_of_the_model_layer_apply_once(pipeline: Pipeline) -> None:
    pipeline.create_store("t", query_model=TEXT, store_original=True, options=EngineOptions())
    with pytest.raises(InvalidInputError, match="No inputs"):
        pipeline.upsert("t", [])
    with pytest.raises(InvalidInputError, match="embeds text only"):
        pipeline.upsert("t", [UpsertItem(png(3))])
    with pytest.raises(InvalidInputError, match="truncation"):
        pipeline.upsert("t", [UpsertItem("x")], truncation="7")


def test_delete_by_id_and_filter(pipeline: Pipeline) -> None:
    texts_store(pipeline)
    assert pipeline.delete("docs", ["d0", "nope"]) == 1
    assert pipeline.delete_by_filter("docs", Condition("n", Op.GTE, 4)) == 2
    assert [e.id for e in pipeline.get_by_filter("docs", None).entries] == ["d1", "d2", "d3"]


# -- search -----------------------------------------------------------------------------------


def test_search_ranks_like_exact_cosine_over_the_index_model(
    pipeline: Pipeline, tiny_manager: ModelManager
) -> None:
    texts_store(pipeline)
    outcome = pipeline.search("docs", SearchRequest("the cat and the dog", 3))
    vectors = tiny_manager.embed(TEXT, DOCS)
    query = tiny_manager.embed(TEXT, ["the cat and the dog"])[0]
    scores = vectors @ query / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query))
    expected = [f"d{i}" for i in np.argsort(-scores)[:3]]
    assert [h.id for h in outcome.hits] == expected
    np.testing.assert_allclose(
        [h.similarity for h in outcome.hits], np.sort(scores)[::-1][:3], atol=1e-5
    )
    assert outcome.plan == "exact"
    top = outcome.hits[0]
    assert top.original == DOCS[int(top.id[1:])] and set(top.metadata) == {"n"}
    assert all(h.rerank_score is None for h in outcome.hits)


def test_search_checks_k_and_passes_the_filter_through(pipeline: Pipeline) -> None:
    texts_store(pipeline)
    with pytest.raises(InvalidInputError, match="k must be at least 1"):
        pipeline.search("docs", SearchRequest("cat", 0))
    hits = pipeline.search("docs", SearchRequest("cat", 10, filter=Condition("n", Op.LT, 2))).hits
    assert sorted(h.id for h in hits) == ["d0", "d1"]


def test_query_model_override_must_share_the_store_space(pipeline: Pipeline) -> None:
    texts_store(pipeline)
    with_twin = pipeline.search("docs", SearchRequest("a cat", 2, query_model=TEXT_INT8))
    assert len(with_twin.hits) == 2
    image_query = pipeline.search("docs", SearchRequest(png(50), 1, query_model=IMAGE))
    assert len(image_query.hits) == 1
    with pytest.raises(IncompatibleModelsError, match="space"):
        pipeline.search("docs", SearchRequest(png(50), 1, query_model=OTHER_SPACE_IMAGE))


def test_rerank_orders_candidates_by_the_cross_encoder_and_keeps_both_scores(
    pipeline: Pipeline, store: EngineStore, tiny_manager: ModelManager
) -> None:
    texts_store(pipeline)
    plain = {h.id: h.similarity for h in pipeline.search("docs", SearchRequest("cat", 6)).hits}
    outcome = pipeline.search("docs", SearchRequest("cat", 2, rerank=RerankSpec(CROSS_ENCODER)))
    assert store.last_k == 20  # max(k, 20) candidates by default
    scores = tiny_manager.rerank(CROSS_ENCODER, "cat", DOCS)
    best = [f"d{i}" for i in np.argsort(-scores, kind="stable")[:2]]
    assert [h.id for h in outcome.hits] == best
    for hit in outcome.hits:
        assert hit.rerank_score == pytest.approx(float(scores[int(hit.id[1:])]), abs=1e-6)
        assert hit.similarity == pytest.approx(plain[hit.id], abs=1e-6)
    pipeline.search("docs", SearchRequest("cat", 2, rerank=RerankSpec(CROSS_ENCODER, 4)))
    assert store.last_k == 4
    with pytest.raises(InvalidInputError, match=r"candidates \(1\) must be at least k \(2\)"):
        pipeline.search("docs", SearchRequest("cat", 2, rerank=RerankSpec(CROSS_ENCODER, 1)))
    # More candidates than one request may rerank: refused before the search runs.
    store.last_k = 0
    most = tiny_manager.limits.max_inputs
    with pytest.raises(InvalidInputError, match=f"{most + 1} rerank candidates.*--max-inputs"):
        pipeline.search("docs", SearchRequest("cat", 2, rerank=RerankSpec(CROSS_ENCODER, most + 1)))
    assert store.last_k == 0


def test_rerank_reads_text_where_the_request_says(pipeline: Pipeline) -> None:
    pipeline.create_store(
        "img", query_model=TEXT, index_model=IMAGE, store_original=False, options=EngineOptions()
    )
    pipeline.upsert(
        "img",
        [UpsertItem(png(10), "a", {"caption": "a red car"}), UpsertItem(png(200), "b", {})],
    )
    by_caption = RerankSpec(CROSS_ENCODER, metadata_field="caption")
    one = pipeline.search(
        "img", SearchRequest("car", 1, filter=Condition("caption", Op.EXISTS), rerank=by_caption)
    )
    assert [h.id for h in one.hits] == ["a"] and one.hits[0].rerank_score is not None
    with pytest.raises(InvalidInputError, match="entry 'b'.*metadata field 'caption'"):
        pipeline.search("img", SearchRequest("car", 2, rerank=by_caption))
    with pytest.raises(InvalidInputError, match="store_original=false"):
        pipeline.search("img", SearchRequest("car", 1, rerank=RerankSpec(CROSS_ENCODER)))
    with pytest.raises(InvalidInputError, match="text query"):
        pipeline.search("img", SearchRequest(png(3), 1, query_model=IMAGE, rerank=by_caption))


def test_searching_a_missing_store_says_so(pipeline: Pipeline) -> None:
    with pytest.raises(StoreNotFoundError):
        pipeline.search("nope", SearchRequest("cat", 1))


# -- models -----------------------------------------------------------------------------------


def test_embed_and_rerank_without_a_store(pipeline: Pipeline, tiny_manager: ModelManager) -> None:
    embeddings = pipeline.embed(TEXT, ["a cat", "a dog"])
    assert embeddings.dimension == 384 and embeddings.vectors.shape == (2, 384)
    ranked = pipeline.rerank(CROSS_ENCODER, "cat", ["a cat", "a car", "music"], top_k=2)
    scores = tiny_manager.rerank(CROSS_ENCODER, "cat", ["a cat", "a car", "music"])
    assert [r.index for r in ranked] == list(np.argsort(-scores, kind="stable")[:2])
    assert [r.score for r in ranked] == sorted((float(s) for s in scores), reverse=True)[:2]
    with pytest.raises(InvalidInputError, match="No documents"):
        pipeline.rerank(CROSS_ENCODER, "cat", [])


# -- bindings cache ---------------------------------------------------------------------------


def test_requests_reuse_the_cached_binding_without_reading_the_store(
    pipeline: Pipeline, store: EngineStore
) -> None:
    texts_store(pipeline)
    store.calls.clear()
    pipeline.search("docs", SearchRequest("cat", 2))
    pipeline.upsert("docs", [UpsertItem("a dog", "x")])
    pipeline.get("docs", ["x"])
    pipeline.delete("docs", ["x"])
    assert [call for call, _ in store.calls] == ["search", "upsert", "get", "delete"]


def test_a_store_dropped_and_created_again_elsewhere_is_never_served_with_a_stale_binding(
    pipeline: Pipeline, store: EngineStore, db: Database, tiny_manager: ModelManager
) -> None:
    texts_store(pipeline)  # cached here: query and index model TEXT, originals kept
    other = AIPipeline(tiny_manager, EngineStore(db))  # a second nachbar-ai on the same db
    other.drop_store("docs")
    other.create_store("docs", query_model=TEXT_INT8, store_original=False, options=EngineOptions())
    store.calls.clear()
    pipeline.upsert("docs", [UpsertItem("a red car", "car", {"n": 1})])
    # Refused once by the store, read again, then written with the new binding.
    assert [call for call, _ in store.calls] == ["upsert", "get_store", "upsert"]
    entry = db.get_keys("docs", ["car"], include_vectors=True)[0][0]
    assert entry.metadata == {"n": 1}  # the new store keeps no originals
    assert entry.vector is not None
    np.testing.assert_allclose(
        entry.vector, tiny_manager.embed(TEXT_INT8, ["a red car"])[0], atol=1e-6
    )
    assert pipeline.get_store("docs").binding.index_model == TEXT_INT8
    hits = pipeline.search("docs", SearchRequest("a red car", 1)).hits
    assert hits[0].id == "car" and hits[0].original is None

    other.drop_store("docs")
    db.create_store(StoreSpec("docs", 384, index=ExactConfig()))  # now a store without models
    with pytest.raises(InvalidInputError, match="created on nachbar-db directly"):
        pipeline.upsert("docs", [UpsertItem("a cat", "cat")])
    assert db.get_store("docs").count == 0
    db.drop_store("docs")
    with pytest.raises(StoreNotFoundError):
        pipeline.search("docs", SearchRequest("cat", 1))
    assert pipeline.binding_cache.get("docs") is None
