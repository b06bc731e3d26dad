from __future__ import annotations

import os
from pathlib import Path

import pytest

from nachbar.ai.errors import ModelUnavailableError
from nachbar.ai.locate import resolve_model_dir
from nachbar.ai.registry import HubSource, ModelSpec, get_spec
from tests.ai.tiny_models import (
    built_specs,
    hub_snapshot_dir,
    hub_specs,
    populate_hub_cache,
    write_model_files,
)


@pytest.mark.parametrize("spec", hub_specs(), ids=lambda s: s.name)
def test_every_hub_model_resolves_from_the_hub_cache_offline(
    spec: ModelSpec, tiny_model_dir: Path
) -> None:
    assert isinstance(spec.source, HubSource)
    directory = resolve_model_dir(spec, tiny_model_dir, offline=True)
    assert directory == hub_snapshot_dir(tiny_model_dir / "hub", spec.source)
    for relative in spec.files.all():
        assert (directory / relative).is_file()


@pytest.mark.parametrize("spec", hub_specs(), ids=lambda s: s.name)
def test_every_hub_model_resolves_from_a_local_dir(spec: ModelSpec, tmp_path: Path) -> None:
    assert isinstance(spec.source, HubSource)
    local = tmp_path / "repo"
    write_model_files(spec, local)
    empty_model_dir = tmp_path / "models"
    by_name = resolve_model_dir(spec, empty_model_dir, offline=True, local_dirs={spec.name: local})
    by_repo = resolve_model_dir(
        spec, empty_model_dir, offline=True, local_dirs={spec.source.repo_id.upper(): local}
    )
    assert by_name == by_repo == local


@pytest.mark.parametrize("spec", built_specs(), ids=lambda s: s.name)
def test_built_models_resolve_to_their_build_folder(spec: ModelSpec, tiny_model_dir: Path) -> None:
    assert resolve_model_dir(spec, tiny_model_dir, offline=True) == (
        tiny_model_dir / "built" / spec.name
    )


def test_missing_built_model_says_to_build(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError) as caught:
        resolve_model_dir(get_spec("all-minilm-l6-v2"), tmp_path, offline=True)
    message = str(caught.value)
    assert "nachbar models build" in message
    assert "model.onnx" in message
    # The directory is for the server log, not for clients.
    assert str(tmp_path) not in message
    assert str(tmp_path / "built" / "all-minilm-l6-v2") in caught.value.detail


def test_partial_built_model_lists_the_missing_file(tmp_path: Path) -> None:
    spec = get_spec("all-minilm-l6-v2")
    write_model_files(spec, tmp_path / "built" / spec.name)
    (tmp_path / "built" / spec.name / "tokenizer.json").unlink()
    with pytest.raises(ModelUnavailableError, match=r"tokenizer\.json missing"):
        resolve_model_dir(spec, tmp_path, offline=True)


def test_missing_hub_model_offline_says_how_to_get_it(tmp_path: Path) -> None:
    spec = get_spec("BAAI/bge-small-en-v1.5")
    with pytest.raises(ModelUnavailableError) as caught:
        resolve_model_dir(spec, tmp_path, offline=True)
    message = str(caught.value)
    assert "does not download models on request" in message
    assert "nachbar models fetch BAAI/bge-small-en-v1.5" in message
    assert "5c38ec7c405ec4b44b94cc5a9bb96e735b38267a" in message  # the pinned revision
    assert "--allow-downloads" in message
    assert f"--local-model {spec.name}=DIR" in message
    assert str(tmp_path) not in message
    assert str(tmp_path / "hub") in caught.value.detail


def test_snapshot_without_a_registered_file_is_unavailable(tmp_path: Path) -> None:
    spec = get_spec("clip-vit-b-32-vision")
    assert isinstance(spec.source, HubSource)
    populate_hub_cache(tmp_path / "hub", [spec])
    (hub_snapshot_dir(tmp_path / "hub", spec.source) / "preprocessor_config.json").unlink()
    with pytest.raises(ModelUnavailableError, match=r"preprocessor_config\.json missing"):
        resolve_model_dir(spec, tmp_path, offline=True)


def test_branch_revisions_resolve_through_refs(tmp_path: Path) -> None:
    spec = get_spec("Qdrant/resnet50-onnx")
    assert isinstance(spec.source, HubSource) and spec.source.revision == "main"
    populate_hub_cache(tmp_path / "hub", [spec])
    ref = tmp_path / "hub" / "models--Qdrant--resnet50-onnx" / "refs" / "main"
    directory = resolve_model_dir(spec, tmp_path, offline=True)
    assert directory.name == ref.read_text()
    ref.unlink()
    with pytest.raises(ModelUnavailableError):
        resolve_model_dir(spec, tmp_path, offline=True)


def test_local_dir_with_missing_file_says_which(tmp_path: Path) -> None:
    spec = get_spec("Xenova/ms-marco-MiniLM-L-6-v2")
    write_model_files(spec, tmp_path)
    (tmp_path / "onnx" / "model.onnx").unlink()
    with pytest.raises(ModelUnavailableError, match=r"onnx/model\.onnx missing"):
        resolve_model_dir(spec, tmp_path / "models", offline=True, local_dirs={spec.name: tmp_path})


def test_empty_file_counts_as_missing(tmp_path: Path) -> None:
    spec = get_spec("all-minilm-l6-v2")
    folder = tmp_path / "built" / spec.name
    write_model_files(spec, folder)
    (folder / "model.onnx").write_bytes(b"")
    with pytest.raises(ModelUnavailableError, match=r"model\.onnx missing"):
        resolve_model_dir(spec, tmp_path, offline=True)


def test_download_path_uses_the_cache_when_the_hub_is_unreachable(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # tests/conftest.py sets HF_HUB_OFFLINE=1: the downloading code path runs, reaches no hub,
    # and must fall back to the cached snapshot, or say what to do when there is none.
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    spec = get_spec("sentence-transformers/all-MiniLM-L6-v2")
    assert isinstance(spec.source, HubSource)
    directory = resolve_model_dir(spec, tiny_model_dir, offline=False)
    assert directory == hub_snapshot_dir(tiny_model_dir / "hub", spec.source)
    with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE is set.*models fetch"):
        resolve_model_dir(spec, tmp_path, offline=False)
