"""Reranking kinds, token budgets and per-role prompts, over tiny stand-in models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nachbar.ai.errors import InputTooLongError, InvalidInputError
from nachbar.ai.inference import TextEmbedder
from nachbar.ai.models import ModelManager
from nachbar.ai.onnx_model import OnnxModel
from nachbar.ai.registry import HubSource, Kind, ModelSpec, Role, all_specs, get_spec
from nachbar.ai.text import TextTokenizer, Truncation
from tests.ai.tiny_models import (
    TinyBert,
    TinyCrossEncoder,
    hub_snapshot_dir,
    reference_tokenizer,
    tiny_for,
)
from tests.ai.tiny_models import tokenizer_style as style_of

DOCUMENTS = ["the dog", "a cat on the house in the sun", "music at night", "cats"]
LATE = [s for s in all_specs() if s.kind is Kind.LATE_INTERACTION]


def unit(rows: np.ndarray) -> np.ndarray:
    normalized: np.ndarray = rows / np.linalg.norm(rows, axis=-1, keepdims=True)
    return normalized


def expected_maxsim(spec: ModelSpec, query: str, documents: list[str]) -> np.ndarray:
    """ColBERT scoring done by hand: markers after [CLS], [MASK] augmentation to 32 tokens
    (not attended to, but scored), documents cut to the budget, sum of per-token maxima."""
    assert spec.late_interaction is not None
    tiny = tiny_for(spec)
    assert isinstance(tiny, TinyBert)
    tokenizer = reference_tokenizer(style_of(spec))
    marker = tokenizer.token_to_id(spec.late_interaction.query_marker)
    assert marker is not None
    ids = tokenizer.encode(query).ids
    marked = [ids[0], marker, *ids[1:]]
    width = max(32, -(-len(marked) // 32) * 32)
    query_ids = np.full((1, width), tokenizer.token_to_id("[MASK]"), dtype=np.int64)
    query_ids[0, : len(marked)] = marked
    mask = np.zeros_like(query_ids)
    mask[0, : len(marked)] = 1
    query_vectors = unit(tiny.reference(query_ids, np.zeros_like(query_ids), mask)[0])
    scores = []
    for document in documents:
        ids = tokenizer.encode(document).ids
        if len(ids) + 1 > spec.rerank_tokens:
            ids = [*ids[: spec.rerank_tokens - 2], ids[-1]]
        doc_ids = np.array(
            [[ids[0], tokenizer.token_to_id(spec.late_interaction.document_marker), *ids[1:]]]
        )
        doc_vectors = unit(
            tiny.reference(doc_ids, np.zeros_like(doc_ids), np.ones_like(doc_ids))[0]
        )
        scores.append((query_vectors @ doc_vectors.T).max(axis=1).sum())
    return np.array(scores, dtype=np.float32)


@pytest.mark.parametrize("spec", LATE, ids=lambda s: s.name)
def test_late_interaction_scores_match_maxsim_by_hand(
    spec: ModelSpec, tiny_manager: ModelManager
) -> None:
    query = "a cat in the house"
    long_document = " ".join(["dog"] * 500)  # over the 300-token budget: cut, never an error
    documents = [*DOCUMENTS, long_document]
    scores = tiny_manager.rerank(spec.name, query, documents)
    assert scores.shape == (len(documents),)
    np.testing.assert_allclose(scores, expected_maxsim(spec, query, documents), rtol=1e-5)
    # A query longer than the 32-token block is padded to the next block, not cut.
    long_query = " ".join(["cat"] * 40)
    np.testing.assert_allclose(
        tiny_manager.rerank(spec.name, long_query, DOCUMENTS[:2]),
        expected_maxsim(spec, long_query, DOCUMENTS[:2]),
        rtol=1e-5,
    )


@pytest.mark.parametrize("spec", LATE, ids=lambda s: s.name)
def test_cached_document_vectors_give_the_same_scores(
    spec: ModelSpec, tiny_manager: ModelManager
) -> None:
    first = tiny_manager.rerank(spec.name, "a red car", DOCUMENTS)
    again = tiny_manager.rerank(spec.name, "a red car", list(reversed(DOCUMENTS)))
    np.testing.assert_allclose(again[::-1], first, rtol=1e-6)
    other_query = tiny_manager.rerank(spec.name, "music", DOCUMENTS)
    np.testing.assert_allclose(other_query, expected_maxsim(spec, "music", DOCUMENTS), rtol=1e-5)


@pytest.mark.parametrize("spec", LATE, ids=lambda s: s.name)
def test_late_interaction_refuses_what_does_not_apply(
    spec: ModelSpec, tiny_manager: ModelManager
) -> None:
    with pytest.raises(InvalidInputError, match="sigmoid applies to cross-encoders only"):
        tiny_manager.rerank(spec.name, "cat", ["dog"], sigmoid=True)
    with pytest.raises(InvalidInputError, match="late-interaction reranker.*does not embed"):
        tiny_manager.embed(spec.name, ["cat"])
    with pytest.raises(InputTooLongError, match="The query is 603 tokens"):
        tiny_manager.rerank(spec.name, " ".join(["cat"] * 600), ["dog"])
    with pytest.raises(InvalidInputError, match="Document 1 is empty"):
        tiny_manager.rerank(spec.name, "cat", ["dog", " "])


def cut_pair_logit(spec: ModelSpec, query: str, document: str) -> float:
    """The cross-encoder's logit for the pair with the document cut to the budget."""
    tiny = tiny_for(spec)
    assert isinstance(tiny, TinyCrossEncoder)
    tokenizer = reference_tokenizer(style_of(spec))
    tokenizer.enable_truncation(max_length=spec.rerank_tokens, strategy="only_second")
    encoding = tokenizer.encode(query, document)
    assert len(encoding.ids) == spec.rerank_tokens
    ids = np.array([encoding.ids])
    types = np.array([encoding.type_ids])
    return float(tiny.reference(ids, types, np.ones_like(ids))[0, 0])


@pytest.mark.parametrize("truncation", ["error", "truncate"])
def test_cross_encoder_documents_are_cut_to_the_budget_under_any_policy(
    truncation: str, tiny_manager: ModelManager
) -> None:
    spec = get_spec("Xenova/ms-marco-MiniLM-L-6-v2")
    assert spec.rerank_tokens == 256 < spec.max_tokens
    long_document = " ".join(["dog", "cat"] * 400)  # 800 words: over the model's 512 limit too
    scores = tiny_manager.rerank(
        spec.name, "red car", ["dog", long_document], truncation=truncation
    )
    assert scores[1] == pytest.approx(cut_pair_logit(spec, "red car", long_document), rel=1e-5)


@pytest.mark.parametrize("reranker", ["Xenova/ms-marco-MiniLM-L-6-v2", LATE[0].name])
def test_documents_over_the_byte_cap_are_cut_too_not_refused(
    reranker: str, tiny_manager: ModelManager
) -> None:
    cap = tiny_manager.limits.max_text_bytes
    huge = "dog cat " * (cap // 4)  # twice the cap
    short = "dog cat " * 400  # the same first tokens, well over every budget
    scores = tiny_manager.rerank(reranker, "red car", [huge, short], truncation="error")
    assert scores[0] == pytest.approx(scores[1], rel=1e-6)


def test_a_query_that_fills_the_budget_follows_the_policy(tiny_manager: ModelManager) -> None:
    name = "stsb-minilm-l6-cross-encoder"
    assert get_spec(name).rerank_tokens == 128
    query = " ".join(["cat"] * 200)  # within the 512-token limit, over the 128-token budget
    with pytest.raises(InputTooLongError, match="The query .* over the 127-token limit"):
        tiny_manager.rerank(name, query, ["dog"])
    scores = tiny_manager.rerank(name, query, ["dog", "a red car"], truncation="truncate")
    assert np.isfinite(scores).all()


BGE = "BAAI/bge-small-en-v1.5"


def test_query_role_puts_the_models_instruction_first(tiny_manager: ModelManager) -> None:
    spec = get_spec(BGE)
    instruction = spec.prompts.query
    assert instruction == "Represent this sentence for searching relevant passages: "
    texts = ["a red car", "cats"]
    as_queries = tiny_manager.embed(BGE, texts, role=Role.QUERY)
    by_hand = tiny_manager.embed(BGE, [instruction + t for t in texts])
    np.testing.assert_allclose(as_queries, by_hand, rtol=1e-6)
    plain = tiny_manager.embed(BGE, texts)
    # Documents take no prompt for BGE; a role by name works as well as the enum.
    np.testing.assert_allclose(tiny_manager.embed(BGE, texts, role="document"), plain, rtol=1e-6)
    with pytest.raises(InvalidInputError, match="Unknown text role 'passage'"):
        tiny_manager.embed(BGE, texts, role="passage")


def test_the_prompt_is_in_the_tokens_the_model_sees(tiny_model_dir: Path) -> None:
    # The tiny CLS-pooled stand-in ignores everything after [CLS], so check the tokens.
    spec = get_spec(BGE)
    assert isinstance(spec.source, HubSource)
    directory = hub_snapshot_dir(tiny_model_dir / "hub", spec.source)
    assert spec.files.tokenizer is not None
    tokenizer = TextTokenizer(
        directory / spec.files.tokenizer,
        model_name=spec.name,
        max_tokens=spec.max_tokens,
    )
    model = OnnxModel(directory / spec.files.model, model_name=spec.name, output=spec.output)
    embedder = TextEmbedder(spec, model, tokenizer)
    (query,) = embedder.prepare(["a red car"], Truncation.ERROR, Role.QUERY)
    (document,) = embedder.prepare(["a red car"], Truncation.ERROR, Role.DOCUMENT)
    reference = reference_tokenizer(style_of(spec))
    assert query.ids.tolist() == reference.encode(spec.prompts.query + "a red car").ids
    assert document.ids.tolist() == reference.encode("a red car").ids


def test_models_without_prompts_ignore_the_role(tiny_manager: ModelManager) -> None:
    texts = ["a red car"]
    np.testing.assert_allclose(
        tiny_manager.embed("all-minilm-l6-v2", texts, role=Role.QUERY),
        tiny_manager.embed("all-minilm-l6-v2", texts),
        rtol=1e-6,
    )


def test_an_empty_text_is_refused_even_with_a_prompt(tiny_manager: ModelManager) -> None:
    with pytest.raises(InvalidInputError, match="Input 1 is empty"):
        tiny_manager.embed(BGE, ["cat", "  "], role=Role.QUERY)


def test_every_reranker_documents_its_purpose_and_budget() -> None:
    rerankers = [s for s in all_specs() if s.kind.reranks]
    assert {s.kind for s in rerankers} == {Kind.CROSS_ENCODER, Kind.LATE_INTERACTION}
    for spec in rerankers:
        assert 0 < spec.rerank_tokens <= spec.max_tokens
    for name in ("stsb-minilm-l6-cross-encoder", "stsb-minilm-l6-cross-encoder-int8"):
        assert "Not a query-to-passage reranker" in get_spec(name).description or (
            "not query-to-passage relevance" in get_spec(name).description
        )


def test_document_cache_keeps_the_most_recently_used_within_its_bytes() -> None:
    from nachbar.ai.inference import _DocumentCache

    vectors = np.zeros((4, 4), dtype=np.float32)  # 64 bytes, plus a 1-byte key
    cache = _DocumentCache(capacity_bytes=2 * 65)
    cache.put(b"a", vectors)
    cache.put(b"b", vectors + 1)
    assert cache.get(b"a") is not None  # "a" is now the most recently used
    cache.put(b"c", vectors + 2)
    assert cache.get(b"b") is None
    assert cache.get(b"a") is not None and cache.get(b"c") is not None
    too_big = _DocumentCache(capacity_bytes=10)
    too_big.put(b"a", vectors)
    assert too_big.get(b"a") is None
