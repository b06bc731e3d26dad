"""ModelManager over tiny stand-ins of every registered model: each code path, with numerics."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from nachbar.ai.errors import (
    InputTooLongError,
    InvalidInputError,
    ModelNotFoundError,
    ModelUnavailableError,
)
from nachbar.ai.image import ImagePreprocessor, decode_image
from nachbar.ai.inference import TextEmbedder
from nachbar.ai.limits import InputLimits
from nachbar.ai.models import ModelManager
from nachbar.ai.registry import Kind, Modality, ModelSpec, Pooling, all_specs, get_spec
from nachbar.ai.text import Truncation
from tests.ai.tiny_models import (
    BUILT_PREPROCESSOR,
    CLIP_PREPROCESSOR,
    RESNET_PREPROCESSOR,
    TinyBert,
    TinyClipText,
    TinyCrossEncoder,
    TinyVision,
    reference_tokenizer,
    tiny_for,
    tokenizer_style,
    write_model_files,
)

TEXTS = ["hello world", "a photo of the big red car on the river", "cats"]
DOCUMENTS = ["the dog", "a cat on the house in the sun", "music at night", "cats"]


def specs_where(kind: Kind, modality: Modality) -> list[ModelSpec]:
    return [s for s in all_specs() if s.kind is kind and s.modality is modality]


def unit(rows: np.ndarray) -> np.ndarray:
    normalized: np.ndarray = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return normalized


def expected_text_vector(spec: ModelSpec, text: str) -> np.ndarray:
    """The model's output for one text computed alone, without padding, in numpy."""
    encoding = reference_tokenizer(tokenizer_style(spec)).encode(text)
    ids = np.array([encoding.ids], dtype=np.int64)
    tiny = tiny_for(spec)
    if isinstance(tiny, TinyClipText):
        vector = tiny.reference(ids)
    else:
        assert isinstance(tiny, TinyBert)
        types = np.array([encoding.type_ids], dtype=np.int64)
        hidden = tiny.reference(ids, types, np.ones_like(ids))
        vector = hidden.mean(axis=1) if spec.pooling is Pooling.MEAN else hidden[:, 0]
    first: np.ndarray = unit(vector)[0]
    return first


def image_bytes(width: int, height: int, seed: int, fmt: str = "PNG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, fmt)
    return buffer.getvalue()


def preprocessor_config(spec: ModelSpec) -> dict[str, object]:
    if spec.is_built:
        return BUILT_PREPROCESSOR
    return RESNET_PREPROCESSOR if spec.output == "output" else CLIP_PREPROCESSOR


def expected_image_vector(spec: ModelSpec, data: bytes) -> np.ndarray:
    tiny = tiny_for(spec)
    assert isinstance(tiny, TinyVision)
    pixels = ImagePreprocessor.from_config(preprocessor_config(spec))(decode_image(data))
    first: np.ndarray = unit(tiny.reference(pixels[None]))[0]
    return first


def expected_logits(spec: ModelSpec, query: str, documents: list[str]) -> np.ndarray:
    tiny = tiny_for(spec)
    assert isinstance(tiny, TinyCrossEncoder)
    tokenizer = reference_tokenizer(tokenizer_style(spec))
    logits = []
    for document in documents:
        encoding = tokenizer.encode(query, document)
        ids = np.array([encoding.ids], dtype=np.int64)
        types = np.array([encoding.type_ids], dtype=np.int64)
        logits.append(tiny.reference(ids, types, np.ones_like(ids))[0, 0])
    return np.array(logits, dtype=np.float32)


# --- every registry entry's code path --------------------------------------------------------


@pytest.mark.parametrize("spec", specs_where(Kind.EMBEDDING, Modality.TEXT), ids=lambda s: s.name)
def test_text_embeddings_match_numpy_pooling(spec: ModelSpec, tiny_manager: ModelManager) -> None:
    vectors = tiny_manager.embed(spec.name, TEXTS)
    assert vectors.shape == (len(TEXTS), spec.dimension)
    assert vectors.dtype == np.float32
    # Batched and padded together, each row equals the text embedded alone.
    for text, vector in zip(TEXTS, vectors, strict=True):
        np.testing.assert_allclose(vector, expected_text_vector(spec, text), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("spec", specs_where(Kind.EMBEDDING, Modality.IMAGE), ids=lambda s: s.name)
def test_image_embeddings_match_numpy(spec: ModelSpec, tiny_manager: ModelManager) -> None:
    images = [image_bytes(300, 240, seed=1), image_bytes(180, 400, seed=2, fmt="JPEG")]
    vectors = tiny_manager.embed(spec.name, images)
    assert vectors.shape == (2, spec.dimension)
    for data, vector in zip(images, vectors, strict=True):
        np.testing.assert_allclose(vector, expected_image_vector(spec, data), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "spec", specs_where(Kind.CROSS_ENCODER, Modality.TEXT), ids=lambda s: s.name
)
def test_cross_encoder_scores_match_numpy(spec: ModelSpec, tiny_manager: ModelManager) -> None:
    query = "a cat in the house"
    scores = tiny_manager.rerank(spec.name, query, DOCUMENTS)
    expected = expected_logits(spec, query, DOCUMENTS)
    assert scores.shape == (len(DOCUMENTS),)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    probabilities = tiny_manager.rerank(spec.name, query, DOCUMENTS, sigmoid=True)
    np.testing.assert_allclose(probabilities, 1 / (1 + np.exp(-expected)), rtol=1e-5)
    assert ((probabilities > 0) & (probabilities < 1)).all()


def test_cross_encoders_without_token_type_ids_really_lack_them(
    tiny_manager: ModelManager,
) -> None:
    for name, has_types in [
        ("BAAI/bge-reranker-base", False),
        ("jinaai/jina-reranker-v1-tiny-en", False),
        ("Xenova/ms-marco-MiniLM-L-6-v2", True),
    ]:
        tiny_manager.rerank(name, "cat", ["dog"])
        loaded = tiny_manager._loaded[get_spec(name).name]
        assert ("token_type_ids" in loaded.engine.model.input_names) is has_types


def test_mean_pooling_ignores_padding(tiny_manager: ModelManager) -> None:
    # Alone, "cats" has 3 tokens; beside a 14-token text (same length bucket, so one batch) it
    # is padded, and the tiny encoder puts +3.0 into padded positions.
    alone = tiny_manager.embed("all-minilm-l6-v2", ["cats"])[0]
    padded = tiny_manager.embed("all-minilm-l6-v2", ["cats", " ".join(["the"] * 12)])[0]
    np.testing.assert_allclose(alone, padded, rtol=1e-5, atol=1e-6)


def test_hub_minilm_and_built_minilm_are_interchangeable_by_space(
    tiny_manager: ModelManager,
) -> None:
    hub, built = get_spec("sentence-transformers/all-MiniLM-L6-v2"), get_spec("all-minilm-l6-v2")
    assert hub.space == built.space
    assert (
        tiny_manager.embed(hub.name, ["cat"]).shape == tiny_manager.embed(built.name, ["cat"]).shape
    )


# --- errors ----------------------------------------------------------------------------------


def test_image_sent_to_a_text_model(tiny_manager: ModelManager) -> None:
    with pytest.raises(InvalidInputError) as caught:
        tiny_manager.embed("all-minilm-l6-v2", ["cat", image_bytes(8, 8, 0)])
    message = str(caught.value)
    assert "Input 1 is an image" in message and "'all-minilm-l6-v2' embeds text only" in message
    assert "imagenet-conse-minilm-l6" in message  # the model that takes images in that space


def test_text_sent_to_an_image_model(tiny_manager: ModelManager) -> None:
    with pytest.raises(InvalidInputError, match="Input 0 is text.*embeds images only"):
        tiny_manager.embed("clip-vit-b-32-vision", ["a photo of a cat"])


def test_corrupt_image_names_its_input(tiny_manager: ModelManager) -> None:
    with pytest.raises(InvalidInputError, match="Input 1 is not a readable image"):
        tiny_manager.embed("clip-vit-b-32-vision", [image_bytes(8, 8, 0), b"nope"])


def test_wrong_kind_of_model(tiny_manager: ModelManager) -> None:
    with pytest.raises(InvalidInputError, match="cross-encoder"):
        tiny_manager.embed("stsb-minilm-l6-cross-encoder", ["cat"])
    with pytest.raises(InvalidInputError, match="embedding model"):
        tiny_manager.rerank("all-minilm-l6-v2", "cat", ["dog"])


def test_empty_batches(tiny_manager: ModelManager) -> None:
    with pytest.raises(InvalidInputError, match="No inputs"):
        tiny_manager.embed("all-minilm-l6-v2", [])
    with pytest.raises(InvalidInputError, match="No documents"):
        tiny_manager.rerank("stsb-minilm-l6-cross-encoder", "cat", [])


def test_unknown_model(tiny_manager: ModelManager) -> None:
    with pytest.raises(ModelNotFoundError, match="nachbar models list"):
        tiny_manager.embed("no-such-model", ["cat"])


def test_truncation_policy_through_the_manager(tiny_manager: ModelManager) -> None:
    long_text = " ".join(["cat"] * 100)  # 102 tokens; CLIP's limit is 77
    with pytest.raises(InputTooLongError, match="102 tokens.*77-token"):
        tiny_manager.embed("clip-vit-b-32-text", ["cat", long_text])
    with pytest.raises(InputTooLongError):
        tiny_manager.embed("clip-vit-b-32-text", [long_text], truncation="error")
    vectors = tiny_manager.embed("clip-vit-b-32-text", [long_text], truncation=Truncation.TRUNCATE)
    assert vectors.shape == (1, 512)
    with pytest.raises(InvalidInputError, match="truncation policy"):
        tiny_manager.embed("clip-vit-b-32-text", ["cat"], truncation="cut")


def test_rerank_truncates_long_documents_on_request(tiny_manager: ModelManager) -> None:
    long_doc = " ".join(["dog"] * 600)
    with pytest.raises(InputTooLongError, match="document 1"):
        tiny_manager.rerank("Xenova/ms-marco-MiniLM-L-6-v2", "cat", ["dog", long_doc])
    scores = tiny_manager.rerank(
        "Xenova/ms-marco-MiniLM-L-6-v2", "cat", ["dog", long_doc], truncation="truncate"
    )
    assert scores.shape == (2,) and np.isfinite(scores).all()


# --- lifecycle -------------------------------------------------------------------------------


def test_list_models_reports_availability_and_loading(tmp_path: Path, tiny_model_dir: Path) -> None:
    with ModelManager(tmp_path) as empty:
        assert not any(s.available or s.loaded for s in empty.list_models())
    with ModelManager(tiny_model_dir) as manager:
        assert all(s.available and not s.loaded for s in manager.list_models())
        manager.embed("all-minilm-l6-v2", ["cat"])
        loaded = {s.spec.name for s in manager.list_models() if s.loaded}
        assert loaded == {"all-minilm-l6-v2"}
        assert manager.is_loaded("ALL-MINILM-L6-V2")


def test_missing_model_fails_on_use_with_instructions(tmp_path: Path) -> None:
    with (
        ModelManager(tmp_path) as manager,
        pytest.raises(ModelUnavailableError, match="nachbar models build"),
    ):
        manager.embed("all-minilm-l6-v2", ["cat"])


def test_local_dirs_stand_in_for_hub_repos(tmp_path: Path) -> None:
    spec = get_spec("BAAI/bge-small-en-v1.5")
    write_model_files(spec, tmp_path / "bge")
    with ModelManager(tmp_path / "models", local_dirs={spec.name: tmp_path / "bge"}) as manager:
        assert manager.list_models()[
            [s.spec.name for s in manager.list_models()].index(spec.name)
        ].available
        vector = manager.embed(spec.name, ["cat"])[0]
    np.testing.assert_allclose(vector, expected_text_vector(spec, "cat"), rtol=1e-5, atol=1e-6)


def test_concurrent_first_use_loads_once(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[str] = []
    original = ModelManager._load

    def counting_load(self: ModelManager, spec: ModelSpec, directory: Path) -> object:
        loads.append(spec.name)
        return original(self, spec, directory)

    monkeypatch.setattr(ModelManager, "_load", counting_load)
    with ModelManager(tiny_model_dir) as manager:
        start = threading.Barrier(6)
        results: list[np.ndarray] = []

        def call() -> None:
            start.wait()
            results.append(manager.embed("BAAI/bge-base-en-v1.5", ["cat"]))

        threads = [threading.Thread(target=call) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert loads == ["BAAI/bge-base-en-v1.5"]
    assert len(results) == 6


def test_eager_load_and_close(tiny_model_dir: Path) -> None:
    manager = ModelManager(tiny_model_dir)
    assert manager.load("clip-vit-b-32-text").name == "clip-vit-b-32-text"
    assert manager.is_loaded("clip-vit-b-32-text")
    manager.close()
    with pytest.raises(ModelUnavailableError, match="closed"):
        manager.embed("clip-vit-b-32-text", ["cat"])


def test_files_of_another_model_are_detected(tmp_path: Path) -> None:
    spec = get_spec("all-minilm-l6-v2")
    folder = tmp_path / "built" / spec.name
    write_model_files(spec, folder)
    # A 768-d encoder where a 384-d one is registered.
    onnx.save(TinyBert.create("wrong", vocab=60, hidden=768).graph(), str(folder / "model.onnx"))
    with (
        ModelManager(tmp_path) as manager,
        pytest.raises(ModelUnavailableError, match="768-d vectors but is registered as 384-d"),
    ):
        manager.embed(spec.name, ["cat"])


def test_preprocessor_with_the_wrong_input_size_is_refused(tmp_path: Path) -> None:
    spec = get_spec("efficientnet-lite0")
    folder = tmp_path / "built" / spec.name
    write_model_files(spec, folder)
    config = {**BUILT_PREPROCESSOR, "crop_size": {"height": 200, "width": 200}}
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    with (
        ModelManager(tmp_path) as manager,
        pytest.raises(ModelUnavailableError, match="200x200 images, but the model takes 224x224"),
    ):
        manager.embed(spec.name, [image_bytes(8, 8, 0)])


# --- bounded cost: loaded models and inputs per request --------------------------------------

TEXT = "all-minilm-l6-v2"


def loaded_names(manager: ModelManager) -> set[str]:
    return {s.spec.name for s in manager.list_models() if s.loaded}


def test_least_recently_used_model_is_unloaded_and_pinned_ones_stay(
    tiny_model_dir: Path,
) -> None:
    with ModelManager(tiny_model_dir, max_loaded=2, pinned=[TEXT]) as manager:
        manager.load(TEXT)
        manager.embed("all-minilm-l6-v2-int8", ["cat"])
        assert loaded_names(manager) == {TEXT, "all-minilm-l6-v2-int8"}
        # The pinned model is the least recently used one now, yet the other one goes.
        manager.embed("clip-vit-b-32-text", ["cat"])
        assert loaded_names(manager) == {TEXT, "clip-vit-b-32-text"}
        manager.rerank("stsb-minilm-l6-cross-encoder", "cat", ["dog"])
        assert loaded_names(manager) == {TEXT, "stsb-minilm-l6-cross-encoder"}
        # An unloaded model loads again on its next use, with the same numbers.
        vector = manager.embed("clip-vit-b-32-text", ["cat"])[0]
        expected = expected_text_vector(get_spec("clip-vit-b-32-text"), "cat")
        np.testing.assert_allclose(vector, expected, rtol=1e-5, atol=1e-6)


def test_recent_use_keeps_a_model_loaded(tiny_model_dir: Path) -> None:
    with ModelManager(tiny_model_dir, max_loaded=2) as manager:
        manager.embed(TEXT, ["cat"])
        manager.embed("all-minilm-l6-v2-int8", ["cat"])
        manager.embed(TEXT, ["cat"])  # now the int8 twin is the least recently used
        manager.embed("clip-vit-b-32-text", ["cat"])
        assert loaded_names(manager) == {TEXT, "clip-vit-b-32-text"}


def test_a_model_unloaded_while_in_use_finishes_its_calls_first(tiny_model_dir: Path) -> None:
    with ModelManager(tiny_model_dir, max_loaded=1) as manager:
        spec = get_spec(TEXT)
        with manager._use(spec) as in_use:
            manager.embed("clip-vit-b-32-text", ["cat"])  # takes the only slot
            assert loaded_names(manager) == {"clip-vit-b-32-text"}
            assert isinstance(in_use.engine, TextEmbedder)
            items = in_use.engine.prepare(["cat"], Truncation.ERROR)
            assert in_use.batcher.submit(items).shape == (1, 384)  # still open
        with pytest.raises(ModelUnavailableError, match="unloaded"):
            in_use.batcher.submit(items)  # closed once its last call was done


def test_no_room_when_every_slot_is_pinned(tiny_model_dir: Path) -> None:
    with ModelManager(tiny_model_dir, max_loaded=1, pinned=[TEXT]) as manager:
        manager.load(TEXT)
        with pytest.raises(ModelUnavailableError, match="--max-loaded-models"):
            manager.embed("clip-vit-b-32-text", ["cat"])
        assert manager.embed(TEXT, ["cat"]).shape == (1, 384)
    with pytest.raises(ValueError, match="2 models are pinned"):
        ModelManager(tiny_model_dir, max_loaded=1, pinned=[TEXT, "clip-vit-b-32-text"])


def test_inputs_per_request_are_capped(tiny_model_dir: Path) -> None:
    limits = InputLimits(max_inputs=3)
    with ModelManager(tiny_model_dir, limits=limits) as manager:
        assert manager.embed(TEXT, ["cat"] * 3).shape == (3, 384)
        with pytest.raises(InvalidInputError, match="4 inputs.*--max-inputs-per-request"):
            manager.embed(TEXT, ["cat"] * 4)
        with pytest.raises(InvalidInputError, match="4 documents.*limit of 3"):
            manager.rerank("stsb-minilm-l6-cross-encoder", "cat", ["dog"] * 4)
        assert not manager.is_loaded("stsb-minilm-l6-cross-encoder")  # refused before loading


def test_a_model_that_cannot_load_unloads_no_other(tmp_path: Path) -> None:
    spec = get_spec("all-minilm-l6-v2-int8")
    write_model_files(get_spec(TEXT), tmp_path / "built" / TEXT)  # the int8 twin is missing
    with ModelManager(tmp_path, max_loaded=1) as manager:
        manager.embed(TEXT, ["cat"])
        with pytest.raises(ModelUnavailableError, match="nachbar models build"):
            manager.embed(spec.name, ["cat"])
        assert loaded_names(manager) == {TEXT}


def test_hub_models_are_not_downloaded_unless_allowed(tmp_path: Path) -> None:
    with ModelManager(tmp_path) as manager:  # offline is the default
        with pytest.raises(ModelUnavailableError, match="does not download models on request"):
            manager.embed("BAAI/bge-small-en-v1.5", ["cat"])
        assert not manager.is_loaded("BAAI/bge-small-en-v1.5")


def test_images_are_decoded_a_bounded_number_at_a_time(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    active, most = 0, 0
    lock = threading.Lock()

    def slow_decode(*args: object, **kwargs: object) -> Image.Image:
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        threading.Event().wait(0.05)
        with lock:
            active -= 1
        return decode_image(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("nachbar.ai.inference.decode_image", slow_decode)
    with ModelManager(tiny_model_dir, limits=InputLimits(image_decoders=2)) as manager:
        manager.load("efficientnet-lite0")
        threads = [
            threading.Thread(
                target=manager.embed, args=("efficientnet-lite0", [image_bytes(40, 30, i)] * 3)
            )
            for i in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert most == 2
