from __future__ import annotations

import dataclasses

import pytest

from nachbar.ai.errors import IncompatibleModelsError, InvalidInputError, ModelNotFoundError
from nachbar.ai.registry import (
    REGISTRY,
    HubSource,
    Kind,
    Modality,
    Pooling,
    Precision,
    _check_registry,
    all_specs,
    get_spec,
    require_same_space,
    same_space,
)


def test_every_name_resolves_case_insensitively() -> None:
    for spec in all_specs():
        assert get_spec(spec.name) is spec
        assert get_spec(spec.name.upper()) is spec
        assert get_spec(f"  {spec.name} ") is spec


def test_unknown_name_lists_close_matches_and_the_list_command() -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        get_spec("all-minilm-l6")
    message = str(caught.value)
    assert "'all-minilm-l6'" in message
    assert "all-minilm-l6-v2" in caught.value.close_matches
    assert "nachbar models list" in message


def test_unknown_name_without_matches_still_says_how_to_list() -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        get_spec("zzzz")
    assert caught.value.close_matches == ()
    assert "nachbar models list" in str(caught.value)


def test_required_entries_exist_with_their_contract() -> None:
    minilm = get_spec("all-minilm-l6-v2")
    assert (minilm.dimension, minilm.pooling, minilm.normalize, minilm.max_tokens) == (
        384,
        Pooling.MEAN,
        True,
        256,
    )
    assert get_spec("all-minilm-l6-v2-int8").precision is Precision.INT8
    assert get_spec("all-minilm-l6-v2-int8").twin_of == "all-minilm-l6-v2"
    assert get_spec("efficientnet-lite0").dimension == 1280
    conse = get_spec("imagenet-conse-minilm-l6")
    assert (conse.modality, conse.dimension, conse.output) == (Modality.IMAGE, 384, "image_embeds")
    for name in ("stsb-minilm-l6-cross-encoder", "stsb-minilm-l6-cross-encoder-int8"):
        assert get_spec(name).kind is Kind.CROSS_ENCODER
        assert get_spec(name).output == "logits"
    assert get_spec("BAAI/bge-small-en-v1.5").pooling is Pooling.CLS
    clip_text, clip_vision = get_spec("clip-vit-b-32-text"), get_spec("clip-vit-b-32-vision")
    assert (clip_text.output, clip_vision.output) == ("text_embeds", "image_embeds")


def test_hub_entries_are_pinned_and_name_their_files() -> None:
    for spec in all_specs():
        if isinstance(spec.source, HubSource):
            assert spec.source.revision
            assert spec.files.model.endswith(".onnx")
            assert spec.source_label == f"{spec.source.repo_id}@{spec.source.revision}"
        else:
            assert spec.source_label == "built offline"


def test_spaces_pair_the_right_models() -> None:
    minilm = get_spec("all-minilm-l6-v2")
    assert same_space(minilm, get_spec("sentence-transformers/all-MiniLM-L6-v2"))
    assert same_space(minilm, get_spec("all-minilm-l6-v2-int8"))
    assert same_space(get_spec("imagenet-conse-minilm-l6"), minilm)
    assert same_space(get_spec("clip-vit-b-32-text"), get_spec("clip-vit-b-32-vision"))
    # Same dimension (384), different training: not comparable.
    assert not same_space(minilm, get_spec("BAAI/bge-small-en-v1.5"))
    assert not same_space(minilm, get_spec("sentence-transformers/all-MiniLM-L12-v2"))
    cross = get_spec("stsb-minilm-l6-cross-encoder")
    assert not same_space(cross, cross)


def test_require_same_space_names_both_models_and_spaces() -> None:
    query, index = require_same_space("all-minilm-l6-v2", "imagenet-conse-minilm-l6")
    assert (query.name, index.name) == ("all-minilm-l6-v2", "imagenet-conse-minilm-l6")
    with pytest.raises(IncompatibleModelsError) as caught:
        require_same_space("all-minilm-l6-v2", "BAAI/bge-small-en-v1.5")
    message = str(caught.value)
    for part in ("all-minilm-l6-v2", "BAAI/bge-small-en-v1.5", "minilm-l6-v2", "bge-small-en-v1.5"):
        assert part in message
    # A cross-encoder has no space at all: that is a bad argument, not a mismatch.
    with pytest.raises(InvalidInputError, match="cross-encoder"):
        require_same_space("stsb-minilm-l6-cross-encoder", "all-minilm-l6-v2")


def test_registry_check_refuses_duplicates_and_unfaithful_twins() -> None:
    minilm = get_spec("all-minilm-l6-v2")
    with pytest.raises(ValueError, match="registered twice"):
        _check_registry((minilm, dataclasses.replace(minilm, name="ALL-MiniLM-L6-v2")))
    bad_twin = dataclasses.replace(
        get_spec("all-minilm-l6-v2-int8"), twin_of="all-minilm-l6-v2", dimension=128
    )
    with pytest.raises(ValueError, match="twin"):
        _check_registry((minilm, bad_twin))
    assert len(_check_registry(REGISTRY)) == len(REGISTRY)
